"""Several data sets (sources) as one split: name them, check each row by row, split each by lesion, write it all.

Why a module of its own: HAM10000 comes from two clinics, and a model trained on it alone does not travel
(issue 23). Pooling other dermoscopy (the ISIC 2019 images that are not HAM10000) needs every image to keep
where it came from (`source`, `collection`), lesions that cannot collide across sources, a test collection that
no candidate trains on (`external`), and a split file that later steps (train, evaluate, export, quantize, gate)
can read without being told where each source's images are. That last part is the sidecar
`<split>.sources.json` written next to the split CSV: source name -> image folder and metadata CSV.

A single-source split (`skinscan data split` without `--source`) is unchanged and has no sidecar.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from skinscan.factory.data import (
    IMAGE_DIR,
    METADATA_FILE,
    REQUIRED_COLUMNS,
    DatasetError,
    DataSource,
    _image_files,
    _unreadable_reason,
    lesion_grouped_split,
    read_metadata,
)
from skinscan.labels import HAM10000, LabelSet

EXTERNAL = "external"  # the split part that no candidate model trains, selects or calibrates on
SIDECAR_SUFFIX = ".sources.json"
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
OTHER_METADATA_NAMES = ("metadata.csv",)  # tried after HAM10000_metadata.csv in a source folder
MAX_LISTED = 8  # problems shown per error; the count says how many more


@dataclass(frozen=True)
class NamedSource:
    """One source of a multi-source split: a short name (`ham10000`) and where its images and CSV are."""

    name: str
    source: DataSource

    def to_json(self) -> dict:
        data = asdict(self.source)
        return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}

    @classmethod
    def from_json(cls, name: str, data: dict) -> NamedSource:
        source = DataSource(image_dir=Path(data["image_dir"]), metadata=Path(data["metadata"]),
                            id_column=data.get("id_column", "image_id"),
                            group_column=data.get("group_column", "lesion_id"),
                            label_column=data.get("label_column", "dx"))
        return cls(name, source)


@dataclass(frozen=True)
class ExternalRule:
    """`SOURCE:COLUMN=VALUE`: the lesions of SOURCE with an image whose metadata COLUMN equals VALUE go to the
    `external` part (every image of such a lesion, so no lesion is both trained on and tested on)."""

    source: str
    column: str
    value: str

    @classmethod
    def parse(cls, text: str) -> ExternalRule:
        match = re.fullmatch(r"([^:=]+):([^=]+)=(.*)", text.strip())
        if not match:
            raise DatasetError(f"--external {text!r} is not SOURCE:COLUMN=VALUE, e.g. isic2019_extra:width=256")
        return cls(*(part.strip() for part in match.groups()))


def parse_source(text: str) -> NamedSource:
    """`NAME=FOLDER[,metadata=CSV][,images=DIR][,id_column=C][,group_column=C][,label_column=C]` -> NamedSource.

    FOLDER holds `images/` (else it is the images folder itself) and `HAM10000_metadata.csv` or `metadata.csv`;
    relative `metadata=`/`images=` paths are inside FOLDER.
    """
    name, equals, rest = text.partition("=")
    name = name.strip()
    if not equals or not SOURCE_NAME.fullmatch(name) or not rest:
        raise DatasetError(f"--source {text!r} is not NAME=FOLDER[,metadata=CSV,...] with a short lower-case NAME "
                           "(letters, digits, _ . -), e.g. --source ham10000=../shared/data/ham10000")
    folder, *options = rest.split(",")
    folder_path = Path(folder).expanduser()
    known = {"metadata", "images", "id_column", "group_column", "label_column"}
    settings: dict[str, str] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or key.strip() not in known:
            raise DatasetError(f"--source {name}: unknown option {option!r}; use "
                               f"{', '.join(sorted(known))} as KEY=VALUE")
        settings[key.strip()] = value.strip()
    image_dir = folder_path / settings["images"] if "images" in settings else (
        folder_path / IMAGE_DIR if (folder_path / IMAGE_DIR).is_dir() else folder_path)
    if "metadata" in settings:
        metadata = folder_path / settings["metadata"]
    else:
        candidates = [folder_path / METADATA_FILE, *(folder_path / n for n in OTHER_METADATA_NAMES)]
        metadata = next((path for path in candidates if path.is_file()), candidates[0])
    source = DataSource(image_dir=image_dir.resolve(), metadata=metadata.resolve(),
                        id_column=settings.get("id_column", "image_id"),
                        group_column=settings.get("group_column", "lesion_id"),
                        label_column=settings.get("label_column", "dx"))
    return NamedSource(name, source)


# --- checking one source, row by row ------------------------------------------------------------------------------


def csv_line(index: int) -> int:
    """The CSV line number of metadata row `index` (line 1 is the header)."""
    return int(index) + 2


def checked_metadata(named: NamedSource, labels: LabelSet = HAM10000, check_images: bool = True,
                     threads: int = 2) -> pd.DataFrame:
    """The source's metadata in skinscan's column names, after checking every row; raises DatasetError naming the
    CSV, its line numbers and what is wrong (empty fields, unknown codes, a lesion with two diagnoses, duplicate
    ids, missing or undecodable images). Every problem of the source is gathered before raising, so one run shows
    them all.
    """
    source = named.source
    try:
        metadata = read_metadata(source)  # missing file, missing columns, a row longer than the header (its line)
    except DatasetError as error:
        raise DatasetError(f"source {named.name}: {error}") from None
    problems: list[str] = []
    original = source.columns
    for column in REQUIRED_COLUMNS:
        empty = metadata[column].isna() | (metadata[column].astype(str).str.strip() == "")
        problems += [f"line {csv_line(i)}: empty {original[column]}" for i in metadata.index[empty]]
    known = metadata.dx.isna() | metadata.dx.isin(labels.codes)
    problems += [f"line {csv_line(i)}: unknown diagnosis {metadata.dx[i]!r} in {original['dx']} (use one of "
                 f"{', '.join(labels.codes)}, or --labels FILE)" for i in metadata.index[~known]]
    duplicated = metadata.image_id.notna() & metadata.image_id.duplicated(keep="first")
    problems += [f"line {csv_line(i)}: {original['image_id']} {metadata.image_id[i]} listed a second time"
                 for i in metadata.index[duplicated]]
    complete = metadata.dropna(subset=list(REQUIRED_COLUMNS))
    diagnoses = complete.groupby("lesion_id").dx.nunique()
    for lesion in diagnoses.index[diagnoses > 1]:
        lines = [csv_line(i) for i in complete.index[complete.lesion_id == lesion]]
        problems.append(f"lines {', '.join(map(str, lines[:5]))}: {original['lesion_id']} {lesion} has more than "
                        "one diagnosis")
    files = _image_files(source.image_dir)
    named_rows = metadata.index[metadata.image_id.notna()]
    missing = [i for i in named_rows if metadata.image_id[i] not in files]
    problems += [f"line {csv_line(i)}: no image {metadata.image_id[i]}.jpg/.png in {source.image_dir}"
                 for i in missing]
    if check_images:
        present = [i for i in named_rows if metadata.image_id[i] in files]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            reasons = pool.map(lambda i: _unreadable_reason(files[metadata.image_id[i]]), present)
            problems += [f"line {csv_line(i)}: image {files[metadata.image_id[i]]} cannot be decoded ({reason})"
                         for i, reason in zip(present, reasons, strict=True) if reason]
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DatasetError(f"source {named.name}: {source.metadata} has {len(problems)} problem(s); nothing was "
                           f"written:\n  {shown}{more}")
    return metadata


# --- the split ----------------------------------------------------------------------------------------------------


def external_lesions(metadata: pd.DataFrame, rules: Sequence[ExternalRule], named: NamedSource) -> pd.Series:
    """Which rows belong to the external part: those of lesions with at least one image matching a rule."""
    matching = pd.Series(False, index=metadata.index)
    for rule in rules:
        if rule.column not in metadata.columns:
            raise DatasetError(f"--external {rule.source}:{rule.column}={rule.value}: {named.source.metadata} has no "
                               f"column {rule.column!r}; its columns are {', '.join(map(str, metadata.columns))}")
        matching |= metadata[rule.column].astype(str) == rule.value
    return metadata.lesion_id.isin(set(metadata.lesion_id[matching]))


def multi_source_split(sources: Sequence[NamedSource], labels: LabelSet = HAM10000,
                       fractions: Sequence[float] = (0.70, 0.15, 0.15), seed: int = 0,
                       external: Sequence[ExternalRule] = (), check_images: bool = True,
                       threads: int = 2) -> pd.DataFrame:
    """One split of several sources: each source checked, then split by lesion on its own (so a source's
    train/val/test is exactly what a single-source split of it with the same seed gives), its external lesions
    set apart. Returns `image_id, lesion_id, dx, split, source, collection`; `lesion_id` is `SOURCE:LESION`.

    `collection` is the metadata's `collection` column where a source has one (else the source name): per-
    collection metrics and the training recipe's class x source sampling read it.
    """
    names = [named.name for named in sources]
    if not sources:
        raise DatasetError("no --source given")
    if len(set(names)) != len(names):
        raise DatasetError(f"source names must differ; got {', '.join(names)}")
    unknown = sorted({rule.source for rule in external} - set(names))
    if unknown:
        raise DatasetError(f"--external names source(s) {', '.join(unknown)} that no --source defines "
                           f"({', '.join(names)})")
    parts: list[pd.DataFrame] = []
    first_source_of: dict[str, str] = {}
    for named in sources:
        metadata = checked_metadata(named, labels, check_images=check_images, threads=threads)
        clashes = [image_id for image_id in metadata.image_id if image_id in first_source_of]
        if clashes:
            raise DatasetError(f"image id {clashes[0]} is in both source {first_source_of[clashes[0]]} and "
                               f"{named.name} ({len(clashes)} shared id(s)): an image must be in one source only; "
                               "drop the duplicates from one metadata CSV")
        first_source_of.update(dict.fromkeys(metadata.image_id, named.name))
        is_external = external_lesions(metadata, [r for r in external if r.source == named.name], named)
        split = lesion_grouped_split(metadata[~is_external], fractions=fractions, seed=seed)
        outside = metadata.loc[is_external, ["image_id", "lesion_id", "dx"]].assign(split=EXTERNAL)
        split = pd.concat([split, outside], ignore_index=True)
        collection = dict(zip(metadata.image_id, metadata.collection.fillna(named.name), strict=True)) \
            if "collection" in metadata.columns else {}
        split["source"] = named.name
        split["collection"] = split.image_id.map(collection).fillna(named.name) if collection else named.name
        split["lesion_id"] = named.name + ":" + split.lesion_id.astype(str)
        parts.append(split)
    return pd.concat(parts, ignore_index=True)


def sidecar_path(split_csv: str | Path) -> Path:
    split_csv = Path(split_csv)
    return split_csv.with_name(split_csv.stem + SIDECAR_SUFFIX)


def write_sources(sources: Sequence[NamedSource], split_csv: str | Path) -> Path:
    """Write `<split>.sources.json` (source -> image folder, metadata CSV, columns) atomically."""
    path = sidecar_path(split_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": 1, "sources": {named.name: named.to_json() for named in sources}}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_sources(split_csv: str | Path) -> dict[str, NamedSource]:
    """The sources a multi-source split names, from its sidecar; DatasetError if it is missing or broken."""
    path = sidecar_path(split_csv)
    if not path.is_file():
        raise DatasetError(f"{split_csv} has a source column but no {path.name} beside it saying where each "
                           "source's images are; keep the two files together or re-create them with "
                           "`skinscan data split --source NAME=FOLDER ...`")
    try:
        document = json.loads(path.read_text())
        return {name: NamedSource.from_json(name, data) for name, data in document["sources"].items()}
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path} is not a sources file written by `skinscan data split` ({error}); "
                           "re-create it") from None


def source_image_paths(split_csv: str | Path, rows: pd.DataFrame) -> list[Path]:
    """The image file of each row of a multi-source split, looked up in its own source's folder."""
    sources = read_sources(split_csv)
    unknown = sorted(set(rows.source) - set(sources))
    if unknown:
        raise DatasetError(f"{split_csv} names source(s) {', '.join(unknown)} that {sidecar_path(split_csv).name} "
                           "does not list; re-create the split")
    found = {name: _image_files(sources[name].source.image_dir) for name in set(rows.source)}
    paths, missing = [], []
    for image_id, name in zip(rows.image_id, rows.source, strict=True):
        path = found[name].get(image_id)
        if path is None:
            missing.append(f"{image_id} (source {name}, {sources[name].source.image_dir})")
        paths.append(path)
    if missing:
        raise DatasetError(f"{len(missing)} image(s) of {split_csv} are missing, e.g. {missing[0]}; fix the folder "
                           f"in {sidecar_path(split_csv)} or restore the images")
    return paths


def split_metadata(split_csv: str | Path) -> pd.DataFrame:
    """Every source's other metadata columns (age, sex, site...) by image id, for subgroup results."""
    frames = []
    for named in read_sources(split_csv).values():
        metadata = read_metadata(named.source)
        frames.append(metadata.drop(columns=[c for c in ("lesion_id", "dx", "collection") if c in metadata]))
    return pd.concat(frames, ignore_index=True)


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per source, collection and part: what `skinscan data split` prints and the report quotes."""
    counts = split.groupby(["source", "collection", "split"]).size().unstack(fill_value=0)
    return counts.reindex(columns=[c for c in ("train", "val", "test", EXTERNAL) if c in counts.columns])
