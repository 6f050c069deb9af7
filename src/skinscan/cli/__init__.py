"""The `skinscan` command: one verb at a time (data, train, evaluate, ...), each saying where results went.

One module per verb family, each verb's options next to its command: `data` (data sets; the `report` extra),
`factory` (train, evaluate, export, quantize, ...; the `train` or `report` extra), `runtime` (predict, benchmark,
app; no extra). Heavy modules are imported inside the verbs that need them, so `skinscan --help` and the runtime
verbs start fast and work in the lean install; a factory verb first checks its extra (`common.require_extra`).
"""

from __future__ import annotations

import argparse
import sys

from skinscan import DISCLAIMER, __version__
from skinscan.cli.common import UsageError
from skinscan.cli.data import add_data
from skinscan.cli.factory import add_factory_verbs
from skinscan.cli.runtime import add_runtime_verbs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinscan", description=f"skinscan {__version__}: {DISCLAIMER}")
    parser.add_argument("--version", action="version", version=f"skinscan {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add_data(verbs)
    add_factory_verbs(verbs)
    add_runtime_verbs(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"skinscan: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinscan: interrupted; a training run continues with `skinscan train --resume --out RUN`",
              file=sys.stderr)
        return 130
    except Exception as error:
        # Our own errors (DatasetError, ImageError, ...) carry a message that says what to do.
        from skinscan.runtime.preprocess import ImageError

        known: tuple[type[Exception], ...] = (ImageError, FileNotFoundError, FileExistsError, ValueError)
        data = sys.modules.get("skinscan.factory.data")  # loaded if it raised; importing it needs pandas
        if data is not None:
            known += (data.DatasetError,)
        if isinstance(error, known):
            print(f"skinscan: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
