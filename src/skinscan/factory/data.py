"""Image data sets: read and validate the metadata and images, and split them by lesion (or patient).

HAM10000's folder layout and column names are the defaults; any folder of images plus a CSV with an image
id, a group id and a diagnosis column (ISIC 2019/2020 exports) is described by a `DataSource`. Every later
step (training, calibration, evaluation) reads the split CSV written here, in skinscan's own column names,
so all of them agree on which lesions were never seen in training.
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

from skinscan.labels import HAM10000, LabelSet
from skinscan.paths import METADATA_FILE, default_data_dir  # noqa: F401 (default_data_dir: callers import it here)
from skinscan.runtime.preprocess import PreprocessConfig, preprocess

IMAGE_DIR = "images"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")  # skinscan's names for the group, image id and diagnosis
SPLITS = ("train", "val", "test")
# `external`: images set apart for a test on a collection no model trains on (skinscan.factory.sources, issue 23).
PARTS = (*SPLITS, "external")
SPLIT_COLUMNS = ("image_id", "lesion_id", "dx", "split")
SOURCE_COLUMNS = ("source", "collection")  # multi-source splits only; the training recipe reads them too
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(Exception):
    """The data set folder or a split file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class DataSource:
    """Where a data set is and how its CSV names things.

    `image_dir` holds one image per row (`<image id>.jpg|.jpeg|.png`); `metadata` is a CSV with one row per
    image whose `id_column` is the image id, `group_column` the lesion (or patient) the image shows, which a
    split never divides, and `label_column` the diagnosis code. The defaults are HAM10000's names; an ISIC
    2019/2020 export plugs in by naming its folder, CSV and columns (`skinscan data split --images DIR
    --metadata CSV --group-column ...`). Only validation and splitting read the metadata: the split CSV they
    write uses skinscan's own column names (`image_id`, `lesion_id`, `dx`), which every later step reads.
    """

    image_dir: Path
    metadata: Path
    id_column: str = "image_id"
    group_column: str = "lesion_id"
    label_column: str = "dx"

    @property
    def columns(self) -> dict[str, str]:
        """skinscan's column name -> this CSV's column name."""
        return {"lesion_id": self.group_column, "image_id": self.id_column, "dx": self.label_column}


def as_source(data: str | Path | DataSource) -> DataSource:
    """A DataSource as given, or the one a folder describes.

    A HAM10000-style folder has `images/` and `HAM10000_metadata.csv`; any other folder is taken as the
    images folder itself (e.g. ISIC_2019_Training_Input), which is all that training, evaluation and export
    need once the split CSV exists.
    """
    if isinstance(data, DataSource):
        return data
    folder = Path(data)
    image_dir = folder / IMAGE_DIR if (folder / IMAGE_DIR).is_dir() else folder
    return DataSource(image_dir=image_dir, metadata=folder / METADATA_FILE)


COLUMN_OPTIONS = {"image_id": "the image id, --id-column", "lesion_id": "the lesion/patient group, --group-column",
                  "dx": "the diagnosis, --label-column"}


def read_metadata(data: str | Path | DataSource) -> pd.DataFrame:
    """Read the metadata CSV into skinscan's column names (`lesion_id`, `image_id`, `dx`, then the others).

    Raises DatasetError if the CSV is missing, unreadable or lacks one of the three columns.
    """
    source = as_source(data)
    path = source.metadata
    if not path.is_file():
        if path.name == METADATA_FILE:
            raise DatasetError(
                f"no {METADATA_FILE} in {path.parent}; point --data at a HAM10000 folder, name another data set's "
                "CSV with --metadata (and its images with --images), or run `skinscan data download --out DIR`"
            )
        raise DatasetError(f"no metadata CSV at {path}; pass the CSV with one row per image as --metadata")
    columns = source.columns
    try:
        metadata = pd.read_csv(path, dtype=dict.fromkeys(columns.values(), str))
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DatasetError(f"{path} is not a readable CSV ({error}); re-download or repair it") from None
    missing = [f"{column!r} ({COLUMN_OPTIONS[ours]})" for ours, column in columns.items()
               if column not in metadata.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks the column(s) {', '.join(missing)}; its columns are "
            f"{', '.join(map(str, metadata.columns))}. Name the right ones with --id-column, --group-column and "
            "--label-column"
        )
    # The same CSV column may serve two roles (e.g. --group-column image for data without lesion ids), and a
    # CSV may have its own column called like one of ours (ISIC 2020's lesion_id when grouping by patient_id):
    # build ours first, then keep every other column.
    ours = pd.DataFrame({name: metadata[column] for name, column in columns.items()})
    others = metadata.drop(columns=[c for c in {*columns.values(), *columns} if c in metadata.columns])
    return pd.concat([ours, others], axis=1)


@dataclass
class ValidationReport:
    """Everything wrong with a data set, gathered in one pass so the user sees it all at once.

    Problems are reported in the CSV's own column names (`source.columns`) and against `label_codes`.
    """

    source: DataSource
    label_codes: tuple[str, ...] = HAM10000.codes
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

        source = self.source
        lines = [f"{source.metadata}: {self.n_rows} metadata rows; images in {source.image_dir}"]
        problems = [
            (self.missing_images, "listed in the metadata but without an image file", "restore the images"),
            (self.extra_images, "image files not in the metadata", "remove them or add metadata rows"),
            (self.duplicate_ids, f"{source.id_column}(s) listed more than once", "keep one row per image"),
            (self.conflicting_lesions, f"{source.group_column}(s) with more than one diagnosis",
             f"fix the {source.label_column} column"),
        ]
        for items, what, todo in problems:
            if items:
                lines.append(f"  {len(items)} {what}: {sample(items)} -> {todo}")
        if self.unknown_codes:
            codes = ", ".join(f"{code!r} x{count}" for code, count in self.unknown_codes.items())
            lines.append(f"  unknown diagnosis codes in {source.label_column}: {codes} -> use one of "
                         f"{', '.join(self.label_codes)}, or a label set that lists them (--labels FILE)")
        if self.empty_fields:
            fields = ", ".join(f"{column} x{count}" for column, count in self.empty_fields.items())
            lines.append(f"  empty required fields: {fields} -> fill them in")
        if self.unreadable_images:
            shown = [f"{name} ({reason})" for name, reason in list(self.unreadable_images.items())[:limit]]
            lines.append(f"  {len(self.unreadable_images)} unreadable image(s): {'; '.join(shown)} "
                         "-> re-download them")
        lines.append("  OK" if self.ok else "  the data set has problems (see above)")
        return "\n".join(lines)


def image_paths(data: str | Path | DataSource, image_ids: Sequence[str]) -> list[Path]:
    """The image file of each id (JPEG or PNG, in the data set's images folder)."""
    image_dir = as_source(data).image_dir
    found = _image_files(image_dir)
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) missing from {image_dir}, e.g. {missing[0]}; point --images "
                           "(or --data) at the folder that holds them; `skinscan data validate` lists them all")
    return [found[image_id] for image_id in image_ids]


def split_image_paths(data: str | Path | DataSource, split_csv: str | Path, rows: pd.DataFrame) -> list[Path]:
    """The image file of each row of a split: in its own source's folder for a multi-source split (its
    `source` column and `<split>.sources.json`), else in `data`'s images folder."""
    if "source" in rows.columns:
        from skinscan.factory.sources import source_image_paths  # sources imports this module

        return source_image_paths(split_csv, rows)
    return image_paths(data, rows.image_id.tolist())


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


def unknown_labels(codes: pd.Series, labels: LabelSet) -> dict[str, int]:
    """{code: count} of the codes that are not in the label set (missing values are not counted)."""
    unknown = codes[codes.notna() & ~codes.isin(labels.codes)].value_counts()
    return {str(code): int(count) for code, count in unknown.items()}


def require_known_labels(codes: pd.Series, labels: LabelSet, where: str) -> None:
    """Raise DatasetError naming the codes outside the label set: a model cannot learn a class it lacks."""
    unknown = unknown_labels(codes, labels)
    if unknown:
        shown = ", ".join(f"{code!r} x{count}" for code, count in list(unknown.items())[:10])
        raise DatasetError(f"{where} has diagnoses outside the label set ({', '.join(labels.codes)}): {shown}; "
                           "pass a label set that lists them (--labels FILE, or --labels isic2019) or drop those rows")


def load_split_images(data_dir: str | Path | DataSource, split_csv: str | Path, part: str, config: PreprocessConfig,
                      max_images: int = 0, seed: int = 0, threads: int = 2,
                      labels: LabelSet = HAM10000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decoded model inputs (uint8 N,H,W,3), label indices (positions in `labels`) and image ids of one part.

    `max_images` > 0 takes a small class-stratified subset (at least 2 images of every class): for tests.
    """
    split = read_split(split_csv)
    rows = split[split.split == part]
    require_known_labels(rows.dx, labels, f"the {part} part of {split_csv}")
    if max_images:
        per_class = max(2, max_images // len(labels))
        rows = rows.groupby("dx").head(per_class) if rows.dx.value_counts().min() < per_class else \
            rows.groupby("dx").sample(n=per_class, replace=False, random_state=seed)
        rows = rows.sort_index()
    paths = split_image_paths(data_dir, split_csv, rows)
    images = decode_images(paths, config, threads=threads, desc=f"decode {part}")
    indices = np.array([labels.index(dx) for dx in rows.dx], dtype=np.int64)
    return images, indices, rows.image_id.tolist()


def validate_dataset(data: str | Path | DataSource, check_images: bool = True,
                     labels: LabelSet = HAM10000) -> ValidationReport:
    """Check a data set: metadata columns and values (diagnoses against `labels`), images present and decodable."""
    source = as_source(data)
    metadata = read_metadata(source)
    report = ValidationReport(source=source, label_codes=labels.codes, n_rows=len(metadata))
    for column in REQUIRED_COLUMNS:
        empty = int(metadata[column].isna().sum() + (metadata[column].astype(str).str.strip() == "").sum())
        if empty:
            report.empty_fields[source.columns[column]] = empty
    listed = set(metadata.image_id.dropna())  # rows with other empty fields still name their image
    metadata = metadata.dropna(subset=list(REQUIRED_COLUMNS))
    report.duplicate_ids = sorted(metadata.loc[metadata.image_id.duplicated(), "image_id"].unique())
    report.unknown_codes = unknown_labels(metadata.dx, labels)
    diagnoses_per_lesion = metadata.groupby("lesion_id").dx.nunique()
    report.conflicting_lesions = sorted(diagnoses_per_lesion.index[diagnoses_per_lesion > 1])

    files = _image_files(source.image_dir)
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

    `lesion_id` is the group column (`DataSource.group_column`: a lesion, or whatever unit must not be
    divided). Stratified by diagnosis: each lesion has exactly one diagnosis, so within each diagnosis the lesions
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
    # Fill order: the smallest parts first (test, val), train takes the rest.
    fill_order = sorted(range(len(SPLITS)), key=lambda i: (fractions[i], -i))[:-1]
    lesion_split: dict[str, str] = {}
    for _, images_per_lesion, lesions in shuffled_lesions_by_diagnosis(metadata, np.random.default_rng(seed)):
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


def shuffled_lesions_by_diagnosis(frame: pd.DataFrame, rng: np.random.Generator):
    """For each diagnosis in name order: the code, its images per lesion (by lesion id) and its lesion ids in a
    seeded random order. The one shuffle both the split and the cross-validation folds hand lesions out from."""
    for dx in sorted(frame.dx.unique()):
        images_per_lesion = frame[frame.dx == dx].groupby("lesion_id").size().sort_index()
        yield dx, images_per_lesion, images_per_lesion.index.to_numpy()[rng.permutation(len(images_per_lesion))]


def cross_validation_folds(split: pd.DataFrame, folds: int = 5, seed: int = 0) -> list[pd.DataFrame]:
    """K lesion-grouped, diagnosis-stratified train/val splits of a split's train+val images; test stays as it is.

    Why: one fixed val split of ~1,300 images (14 df, 18 vasc) moves balanced accuracy by +-0.06 depending on
    which lesions it holds, and training several seeds does not average that out: every seed is scored on the
    same images (docs/RESULTS.md, run L: +2 points on val over eight seeds, none on test). Comparing recipes
    across K folds, each scored on different lesions, does. Fold k's val is the k-th of K groups of lesions;
    its train is the other K-1; the test rows are copied unchanged, so the held-out test split is never used.
    Within each diagnosis the lesions are shuffled (seeded) and each goes to the group with the fewest images of
    that diagnosis so far, so every fold's val holds about 1/K of each class.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    pool = split[split.split.isin(("train", "val"))]
    fold_of: dict[str, int] = {}
    for dx, images_per_lesion, lesions in shuffled_lesions_by_diagnosis(pool, np.random.default_rng(seed)):
        if len(lesions) < folds:
            raise DatasetError(f"only {len(lesions)} train/val lesion(s) of {dx}: too few for {folds} folds; use "
                               "fewer folds")
        filled = [0] * folds
        for lesion in lesions:
            group = filled.index(min(filled))
            filled[group] += int(images_per_lesion[lesion])
            fold_of[lesion] = group
    result = []
    for k in range(folds):
        fold = split[[c for c in (*SPLIT_COLUMNS, *SOURCE_COLUMNS) if c in split.columns]].copy()
        in_pool = fold.split.isin(("train", "val"))
        fold.loc[in_pool, "split"] = np.where(fold.loc[in_pool, "lesion_id"].map(fold_of) == k, "val", "train")
        result.append(fold.reset_index(drop=True))
    return result


def write_split(split: pd.DataFrame, path: str | Path, sources=None) -> Path:
    """Write the split CSV atomically (a crash never leaves half a file that later steps would trust).

    A multi-source split keeps its `source` and `collection` columns; `sources` (skinscan.factory.sources.NamedSource
    list) also writes `<split>.sources.json`, where later steps find each source's images. It is written first,
    so the split CSV, the file every step looks for, appears last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sources is not None:
        from skinscan.factory.sources import write_sources  # sources imports this module

        write_sources(sources, path)
    temporary = path.with_name(path.name + ".tmp")
    split[[c for c in (*SPLIT_COLUMNS, *SOURCE_COLUMNS) if c in split.columns]].to_csv(temporary, index=False)
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
    unknown_parts = set(split.split) - set(PARTS)
    if unknown_parts:
        raise DatasetError(f"{path} has unknown split names {sorted(unknown_parts)}; expected {PARTS}")
    leaking = split.groupby("lesion_id").split.nunique()
    if (leaking > 1).any():
        raise DatasetError(f"{path} puts lesion(s) {list(leaking.index[leaking > 1])[:5]} in more than one part; "
                           "re-create it with `skinscan data split`")
    return split


def split_with_metadata(split: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """The split joined with the metadata columns (age, sex, localization, dx_type) used for subgroup results."""
    extra = [c for c in metadata.columns if c not in ("lesion_id", "dx")]
    return split.merge(metadata[extra], on="image_id", how="left", validate="one_to_one")
