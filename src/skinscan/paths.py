"""Where skinscan looks for a data set by default.

Its own leaf module, not part of `skinscan.factory.data`, because the CLI's parser needs the default at build
time and must not import pandas for it: `skinscan --help` and the runtime verbs work without the `report` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

METADATA_FILE = "HAM10000_metadata.csv"


def default_data_dir() -> Path:
    """`$SKINSCAN_DATA`, else `../shared/data/ham10000` next to the working directory or the repository."""
    if os.environ.get("SKINSCAN_DATA"):
        return Path(os.environ["SKINSCAN_DATA"])
    relative = Path("../shared/data/ham10000")
    candidates = [Path.cwd() / relative, Path(__file__).resolve().parents[2] / relative]
    for candidate in candidates:
        if (candidate / METADATA_FILE).is_file():
            return candidate.resolve()
    return candidates[0]
