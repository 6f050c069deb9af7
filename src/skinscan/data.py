"""HAM10000-style data sets: read and validate the metadata and images, and split them by lesion.

Every later step (training, calibration, evaluation) reads the split CSV written here, so all of them
agree on which lesions were never seen in training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from skinscan.labels import LABEL_CODES, label_index
from skinscan.preprocess import PreprocessConfig, preprocess

METADATA_FILE = "HAM10000_metadata.csv"
IMAGE_DIR = "images"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(Exception):
    """The data set folder or a split file cannot be used; the message says why and what to do."""


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


def read_metadata(data_dir: str | Path) -> pd.DataFrame:
    """Read `HAM10000_metadata.csv`; raise DatasetError if it is missing, unreadable or lacks columns."""
    path = Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise DatasetError(
            f"no {METADATA_FILE} in {data_dir}; point --data at a HAM10000 folder "
            "(or run `skinscan data download --out DIR`)"
        )
    try:
        metadata = pd.read_csv(path, dtype={"lesion_id": str, "image_id": str, "dx": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DatasetError(f"{path} is not a readable CSV ({error}); re-download or repair it") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in metadata.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected at least {', '.join(REQUIRED_COLUMNS)}"
        )
    return metadata


@dataclass
class ValidationReport:
    """Everything wrong with a data set folder, gathered in one pass so the user sees it all at once."""

    data_dir: Path
    n_rows: int = 0
    missing_images: list[str] = field(default_factory=list)
    extra_images: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    unknown_codes: dict[str, int] = field(default_factory=dict)
    conflicting_lesions: list[str] = field(default_factory=list)
    empty_fields: dict[str, int] = field(default_factory=dict)
    unreadable_images: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing_images or self.extra_images or self.duplicate_ids or self.unknown_codes
                    or self.conflicting_lesions or self.empty_fields or self.unreadable_images)

    def format(self, limit: int = 5) -> str:
        def sample(items: Sequence[str]) -> str:
            shown = ", ".join(list(items)[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"{self.data_dir}: {self.n_rows} metadata rows"]
        problems = [
            (self.missing_images, "listed in the metadata but without an image file", "restore the images"),
            (self.extra_images, "image files not in the metadata", "remove them or add metadata rows"),
            (self.duplicate_ids, "image_id(s) listed more than once", "keep one row per image"),
            (self.conflicting_lesions, "lesion_id(s) with more than one diagnosis", "fix the dx column"),
        ]
        for items, what, todo in problems:
            if items:
                lines.append(f"  {len(items)} {what}: {sample(items)} -> {todo}")
        if self.unknown_codes:
            codes = ", ".join(f"{code!r} x{count}" for code, count in self.unknown_codes.items())
            lines.append(f"  unknown diagnosis codes: {codes} -> use one of {', '.join(LABEL_CODES)}")
        if self.empty_fields:
            fields = ", ".join(f"{column} x{count}" for column, count in self.empty_fields.items())
            lines.append(f"  empty required fields: {fields} -> fill them in")
        if self.unreadable_images:
            shown = [f"{name} ({reason})" for name, reason in list(self.unreadable_images.items())[:limit]]
            lines.append(f"  {len(self.unreadable_images)} unreadable image(s): {'; '.join(shown)} "
                         "-> re-download them")
        lines.append("  OK" if self.ok else "  the data set has problems (see above)")
        return "\n".join(lines)


def image_paths(data_dir: str | Path, image_ids: Sequence[str]) -> list[Path]:
    """The image file of each id (JPEG or PNG, in `images/`)."""
    image_dir = Path(data_dir) / IMAGE_DIR
    found = _image_files(image_dir)
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) missing from {image_dir}, e.g. {missing[0]}; "
                           "run `skinscan data validate` for the full list")
    return [found[image_id] for image_id in image_ids]


def _image_files(image_dir: Path) -> dict[str, Path]:
    if not image_dir.is_dir():
        return {}
    return {path.stem: path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}


def decode_images(paths: list[Path], config: PreprocessConfig, threads: int = 2, desc: str = "decode") -> np.ndarray:
    """Decode and resize every image once into one uint8 array (N, H, W, 3): the in-memory cache.

    Pillow releases the GIL while decoding, so a small thread pool uses all cores.
    """
    images = np.empty((len(paths), *config.size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = pool.map(lambda p: preprocess(p, config), paths)
        for i, array in enumerate(tqdm(results, total=len(paths), desc=desc, leave=False, unit="img")):
            images[i] = array
    return images


def load_split_images(data_dir: str | Path, split_csv: str | Path, part: str, config: PreprocessConfig,
                      max_images: int = 0, seed: int = 0, threads: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decoded model inputs (uint8 N,H,W,3), label indices and image ids of one part of a split.

    `max_images` > 0 takes a small class-stratified subset (at least 2 images of every class): for tests.
    """
    split = read_split(split_csv)
    rows = split[split.split == part]
    if max_images:
        per_class = max(2, max_images // len(LABEL_CODES))
        rows = rows.groupby("dx").head(per_class) if rows.dx.value_counts().min() < per_class else \
            rows.groupby("dx").sample(n=per_class, replace=False, random_state=seed)
        rows = rows.sort_index()
    paths = image_paths(data_dir, rows.image_id.tolist())
    images = decode_images(paths, config, threads=threads, desc=f"decode {part}")
    labels = np.array([label_index(dx) for dx in rows.dx], dtype=np.int64)
    return images, labels, rows.image_id.tolist()


def validate_dataset(data_dir: str | Path, check_images: bool = True) -> ValidationReport:
    """Check a data set folder: metadata columns and values, image files present and decodable."""
    data_dir = Path(data_dir)
    metadata = read_metadata(data_dir)
    report = ValidationReport(data_dir=data_dir, n_rows=len(metadata))
    for column in REQUIRED_COLUMNS:
        empty = int(metadata[column].isna().sum() + (metadata[column].astype(str).str.strip() == "").sum())
        if empty:
            report.empty_fields[column] = empty
    listed = set(metadata.image_id.dropna())  # rows with other empty fields still name their image
    metadata = metadata.dropna(subset=list(REQUIRED_COLUMNS))
    report.duplicate_ids = sorted(metadata.loc[metadata.image_id.duplicated(), "image_id"].unique())
    unknown = metadata.loc[~metadata.dx.isin(LABEL_CODES), "dx"].value_counts()
    report.unknown_codes = {str(code): int(count) for code, count in unknown.items()}
    diagnoses_per_lesion = metadata.groupby("lesion_id").dx.nunique()
    report.conflicting_lesions = sorted(diagnoses_per_lesion.index[diagnoses_per_lesion > 1])

    files = _image_files(data_dir / IMAGE_DIR)
    report.missing_images = sorted(listed - set(files))
    report.extra_images = sorted(set(files) - listed)
    if check_images:
        for image_id in sorted(listed & set(files)):
            reason = _unreadable_reason(files[image_id])
            if reason:
                report.unreadable_images[image_id] = reason
    return report


def _unreadable_reason(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 or 1, image.height // 8 or 1))  # fast: decode at 1/8 scale
            image.load()
    except Exception as error:  # any decoding failure is a finding for the report, not a crash
        return f"{type(error).__name__}: {error}"
    return None


def lesion_grouped_split(
    metadata: pd.DataFrame,
    fractions: Sequence[float] = (0.70, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every image to train/val/test so that all images of a lesion land in the same part.

    Stratified by diagnosis: each lesion has exactly one diagnosis, so within each diagnosis the lesions
    are shuffled (seeded) and handed out until each part holds its fraction of that diagnosis' images.
    Smaller parts are filled first so the rare classes (df, vasc) get their share in val and test.
    Returns `image_id, lesion_id, dx, split`, one row per image, in the metadata's order.
    """
    if len(fractions) != len(SPLITS) or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    for column in ("lesion_id", "dx"):
        empty = metadata[column].isna() | (metadata[column].astype(str).str.strip() == "")
        if empty.any():
            raise DatasetError(f"{int(empty.sum())} metadata row(s) have an empty {column}, e.g. image "
                               f"{metadata.loc[empty, 'image_id'].iloc[0]}; fix them (`skinscan data validate`)")
    conflicting = metadata.groupby("lesion_id").dx.nunique()
    if (conflicting > 1).any():
        raise DatasetError(f"lesion(s) with more than one diagnosis: {list(conflicting.index[conflicting > 1])[:5]}")
    rng = np.random.default_rng(seed)
    # Fill order: the smallest parts first (test, val), train takes the rest.
    fill_order = sorted(range(len(SPLITS)), key=lambda i: (fractions[i], -i))[:-1]
    lesion_split: dict[str, str] = {}
    for dx in sorted(metadata.dx.unique()):
        images_per_lesion = metadata[metadata.dx == dx].groupby("lesion_id").size().sort_index()
        lesions = images_per_lesion.index.to_numpy()[rng.permutation(len(images_per_lesion))]
        total = int(images_per_lesion.sum())
        targets = {i: fractions[i] * total for i in fill_order}
        filled = dict.fromkeys(fill_order, 0)
        for lesion in lesions:
            count = int(images_per_lesion[lesion])
            # The first unfilled part that this lesion does not overshoot by more than half of itself.
            part = next((i for i in fill_order if filled[i] + count / 2 <= targets[i]), None)
            if part is None:
                lesion_split[lesion] = SPLITS[max(range(len(SPLITS)), key=lambda i: fractions[i])]
            else:
                filled[part] += count
                lesion_split[lesion] = SPLITS[part]
    split = metadata[["image_id", "lesion_id", "dx"]].copy()
    split["split"] = split.lesion_id.map(lesion_split)
    return split.reset_index(drop=True)


def write_split(split: pd.DataFrame, path: str | Path) -> Path:
    """Write the split CSV atomically (a crash never leaves half a file that later steps would trust)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    split[["image_id", "lesion_id", "dx", "split"]].to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


def read_split(path: str | Path) -> pd.DataFrame:
    """Read a split CSV written by `write_split`, checking it is still lesion-disjoint."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no split file at {path}; create one with `skinscan data split --out {path}`")
    split = pd.read_csv(path, dtype=str)
    missing = {"image_id", "lesion_id", "dx", "split"} - set(split.columns)
    if missing:
        raise DatasetError(f"{path} lacks the column(s) {sorted(missing)}; re-create it with `skinscan data split`")
    unknown_parts = set(split.split) - set(SPLITS)
    if unknown_parts:
        raise DatasetError(f"{path} has unknown split names {sorted(unknown_parts)}; expected {SPLITS}")
    leaking = split.groupby("lesion_id").split.nunique()
    if (leaking > 1).any():
        raise DatasetError(f"{path} puts lesion(s) {list(leaking.index[leaking > 1])[:5]} in more than one part; "
                           "re-create it with `skinscan data split`")
    return split


def split_with_metadata(split: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """The split joined with the metadata columns (age, sex, localization) used for subgroup results."""
    extra = [c for c in metadata.columns if c not in ("lesion_id", "dx")]
    return split.merge(metadata[extra], on="image_id", how="left", validate="one_to_one")
