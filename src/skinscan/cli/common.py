"""What every verb family of the `skinscan` command shares: the usage error, argument types, the data options,
the check that a factory verb's extra is installed."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from skinscan.paths import default_data_dir

# What each pip extra (pyproject.toml) brings, by import name; `require_extra` checks them before a verb runs.
REPORT_MODULES = ("pandas", "sklearn", "scipy", "matplotlib", "skimage")
EXTRA_MODULES = {"report": REPORT_MODULES, "train": ("torch", "torchvision", "onnx", *REPORT_MODULES)}


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2, no traceback."""


def require_extra(extra: str) -> None:
    """Raise a UsageError naming the pip extra to install when a module it brings is missing.

    `pip install skinscan` is the runtime only (predict, benchmark, app); the factory verbs call this first, so
    a user without the extra reads what to install instead of an ImportError's traceback.
    """
    missing = [name for name in EXTRA_MODULES[extra] if not _installed(name)]
    if missing:
        raise UsageError(f"this command needs the `{extra}` extra ({', '.join(missing)} not installed): "
                         f'pip install "skinscan[{extra}]"')


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked module (sys.modules[name] = None) or a broken install
        return False


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, got {text}")
    return value


def data_source(args):
    """The DataSource the data options name: --data's layout, with --images, --metadata and columns overriding."""
    from skinscan.factory.data import DataSource, as_source

    folder = as_source(args.data)
    return DataSource(image_dir=args.images or folder.image_dir, metadata=getattr(args, "metadata", None) or
                      folder.metadata, id_column=getattr(args, "id_column", "image_id"),
                      group_column=getattr(args, "group_column", "lesion_id"),
                      label_column=getattr(args, "label_column", "dx"))


def add_data_arguments(parser: argparse.ArgumentParser, metadata: bool = True, labels: bool = False) -> None:
    """Where the data set is: HAM10000's layout by default, any image folder + CSV with --images/--metadata."""
    group = parser.add_argument_group("data set", "HAM10000's layout by default; any folder of images plus a CSV "
                                      "with one row per image (ISIC 2019/2020 exports) via --images and --metadata")
    group.add_argument("--data", type=Path, default=default_data_dir(),
                       help="HAM10000-style folder: DATA/images/ and DATA/HAM10000_metadata.csv (default: %(default)s)")
    group.add_argument("--images", type=Path, default=None,
                       help="the folder of images, named <image id>.jpg/.png (default: DATA/images)")
    if metadata:
        group.add_argument("--metadata", type=Path, default=None,
                           help="CSV with one row per image (default: DATA/HAM10000_metadata.csv)")
        group.add_argument("--id-column", default="image_id", help="CSV column with the image id (file name stem)")
        group.add_argument("--group-column", default="lesion_id",
                           help="CSV column with the lesion (group) id: a split never divides a group")
        group.add_argument("--label-column", default="dx", help="CSV column with the diagnosis code")
    if labels:
        group.add_argument("--labels", default=None, metavar="FILE",
                           help="label set: a JSON list of {code, name, malignant} in output order, or a built-in "
                                "set (ham10000, isic2019); default: HAM10000's 7 diagnoses")
