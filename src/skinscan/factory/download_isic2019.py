"""Download the official ISIC 2019 training data (images, ground truth, metadata) at full resolution.

Why: the only complete copy of the ISIC 2019 images that are not HAM10000 reachable offline is mostly 84 px
(../shared/data/isic2019_extra); a user with internet trains the full-resolution model from the official release.
The files come from the ISIC challenge's public bucket, fetched with the HAM10000 download's machinery
(`skinscan.factory.download`: resumable with HTTP Range, retried, verified, atomic). ISIC publishes no checksums,
so the size is the server's Content-Length and the sha256 of each file is recorded on its first complete download
(`downloads/isic2019.sha256.json`) and checked on every later run ("trust on first use").

The result is a folder `skinscan data` reads as a source: OUT/images/ISIC_*.jpg and OUT/metadata.csv with
HAM10000's columns (`lesion_id,image_id,dx,...`), `dx` in HAM10000's codes (AK and SCC both -> akiec, as in
../shared/data/isic2019_extra), the original label in `dx_isic2019`, and `collection` (ham10000, bcn20000, msk,
isic_archive). Rows labelled UNK (unknown) are dropped and counted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from skinscan.factory.download import (
    TIMEOUT_S,
    USER_AGENT,
    DatasetFile,
    DownloadError,
    Origin,
    call_with_retries,
    check_images_present,
    fetch_verified,
    file_digest,
    images_already_unpacked,
    record_unpacked,
    unpack_images,
    write_bytes_atomically,
)

__all__ = ["ISIC_BUCKET_URL", "download_isic2019", "convert_metadata"]

ISIC_BUCKET_URL = "https://isic-challenge-data.s3.amazonaws.com/2019"
ISIC2019_PAGE = "https://challenge.isic-archive.com/data/#2019"
IMAGES_ZIP = "ISIC_2019_Training_Input.zip"
GROUND_TRUTH_CSV = "ISIC_2019_Training_GroundTruth.csv"
METADATA_CSV = "ISIC_2019_Training_Metadata.csv"
ORIGIN = Origin("the ISIC archive", ISIC2019_PAGE, f"{IMAGES_ZIP}, {GROUND_TRUTH_CSV} and {METADATA_CSV}")
# Some ISIC 2019 images are named ISIC_0000000_downsampled.jpg: they keep that name as their image id.
IMAGE_NAME = re.compile(r"ISIC_\d+(_downsampled)?\.jpg")
CHECKSUMS = "isic2019.sha256.json"
OUTPUT_CSV = "metadata.csv"
OUTPUT_COLUMNS = ("lesion_id", "image_id", "dx", "dx_isic2019", "age", "sex", "localization", "collection")
# ISIC 2019's eight diagnoses (and UNK) -> HAM10000's seven codes.
TO_HAM10000 = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "SCC": "akiec", "BKL": "bkl", "DF": "df",
               "VASC": "vasc"}
UNKNOWN = "UNK"
HAM10000_IDS = range(24306, 34321)  # ISIC_0024306 .. ISIC_0034320


def download_isic2019(out_dir: str | os.PathLike[str], base_url: str = ISIC_BUCKET_URL, *, progress: bool = True,
                      drop_collections: tuple[str, ...] = (), keep_archive: bool = True) -> tuple[Path, dict]:
    """Download, verify, unpack and convert ISIC 2019 into out_dir; safe to interrupt and re-run.

    `drop_collections` leaves collections out of metadata.csv (e.g. `ham10000` when HAM10000 is another source:
    an image must be in one source only, and HAM10000's hidden test lesions are in ISIC 2019). Returns out_dir and
    a summary {images, dropped_unknown, dropped_collections, per_collection}.
    """
    out = Path(out_dir)
    downloads, images = out / "downloads", out / "images"
    downloads.mkdir(parents=True, exist_ok=True)
    images.mkdir(exist_ok=True)
    recorded = read_recorded_checksums(downloads)
    files = [release_file(name, base_url, downloads, recorded) for name in (IMAGES_ZIP, GROUND_TRUTH_CSV, METADATA_CSV)]
    archive, ground_truth, metadata = files
    to_unpack = not images_already_unpacked(archive, downloads, images)
    fetched = ([archive] if to_unpack else []) + [ground_truth, metadata]
    for dataset_file in fetched:
        fetch_verified(dataset_file, downloads, progress=progress, origin=ORIGIN)
    if to_unpack:
        try:
            unpacked = unpack_images(downloads / IMAGES_ZIP, images, progress=progress, pattern=IMAGE_NAME)
        except DownloadError as error:
            (downloads / IMAGES_ZIP).unlink(missing_ok=True)  # complete but unreadable: fetch it afresh next time
            raise DownloadError(f"{IMAGES_ZIP} was downloaded whole but cannot be unpacked ({error.__cause__ or error})"
                                f"; it was deleted: re-run to download it again") from None
    rows, summary = convert_metadata(downloads / GROUND_TRUTH_CSV, downloads / METADATA_CSV, drop_collections)
    check_images_present([row["image_id"] for row in rows], images, downloads)
    # Only files that unpacked and converted cleanly get their sha256 recorded: a bad first download must not
    # become the reference every later download is checked against.
    for dataset_file in fetched:
        record_checksum(downloads, dataset_file, recorded)
    if to_unpack:
        record_unpacked(release_file(IMAGES_ZIP, base_url, downloads, recorded), downloads, unpacked)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, OUTPUT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomically(out / OUTPUT_CSV, buffer.getvalue().encode())
    if not keep_archive:
        (downloads / IMAGES_ZIP).unlink(missing_ok=True)
    return out, summary


# --- which files: fixed names in the bucket, sizes from the server, checksums recorded here ----------------------


def read_recorded_checksums(downloads: Path) -> dict[str, dict]:
    path = downloads / CHECKSUMS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DownloadError(f"{path} is not valid JSON; delete it (the files are then checked by size only and "
                            "their sha256 recorded again) and re-run") from None


def record_checksum(downloads: Path, dataset_file: DatasetFile, recorded: dict[str, dict]) -> None:
    """Record the sha256 and size of a file on its first complete download (ISIC publishes none)."""
    if dataset_file.name in recorded:
        return
    path = downloads / dataset_file.name
    recorded[dataset_file.name] = {"sha256": file_digest(path, "sha256"), "size": path.stat().st_size}
    write_bytes_atomically(downloads / CHECKSUMS, json.dumps(recorded, indent=1).encode())


def release_file(name: str, base_url: str, downloads: Path, recorded: dict[str, dict],
                 known_size: int | None = None) -> DatasetFile:
    """One file of the release: its URL, its size (recorded, else the server's) and its recorded sha256."""
    url = f"{base_url.rstrip('/')}/{name}"
    if name in recorded:
        entry = recorded[name]
        return DatasetFile(name, url, int(entry["size"]), "sha256", entry["sha256"])
    size = known_size if known_size is not None else remote_size(url, downloads)
    return DatasetFile(name, url, size, None, None)


def remote_size(url: str, downloads: Path) -> int | None:
    """Content-Length of a HEAD request (None when the server does not say), so a short file is caught."""

    def head() -> int | None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length else None

    try:
        return call_with_retries(head, url, downloads, ORIGIN)
    except DownloadError as error:
        if isinstance(error.__cause__, urllib.error.HTTPError) and error.__cause__.code in (403, 405, 501):
            return None  # HEAD not allowed (S3 without ListBucket answers 403): the GET's length still checks
        raise


# --- the metadata: ISIC 2019's one-hot ground truth + metadata -> HAM10000-style columns -------------------------


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        raise DownloadError(f"{path} lacks the column(s) {', '.join(missing)}; delete it and re-run")
    return list(reader)


def diagnosis(row: dict[str, str], path: Path, line: int) -> str:
    """The ISIC 2019 code whose one-hot column is 1 in a ground-truth row."""
    hot = [code for code in (*TO_HAM10000, UNKNOWN) if float(row.get(code) or 0) >= 0.5]
    if len(hot) != 1:
        raise DownloadError(f"{path} line {line}: image {row['image']} has {len(hot)} diagnoses marked "
                            f"({', '.join(hot) or 'none'}); expected exactly one. Delete it and re-run")
    return hot[0]


def collection_of(image_id: str, lesion_id: str) -> str:
    """Which collection an ISIC 2019 image comes from, by its lesion id prefix or (HAM10000) its id range."""
    number = re.match(r"ISIC_(\d+)", image_id)
    if lesion_id.startswith("HAM_") or (number and int(number.group(1)) in HAM10000_IDS):
        return "ham10000"
    if lesion_id.startswith("BCN_"):
        return "bcn20000"
    if lesion_id.startswith("MSK"):
        return "msk"
    return "isic_archive"


def convert_metadata(ground_truth: Path, metadata: Path,
                     drop_collections: tuple[str, ...] = ()) -> tuple[list[dict[str, str]], dict]:
    """HAM10000-style rows (OUTPUT_COLUMNS) from the ground truth and metadata CSVs, and a summary."""
    truth_rows = read_csv_rows(ground_truth, ("image", *TO_HAM10000))
    meta_rows = read_csv_rows(metadata, ("image", "lesion_id"))
    meta = {row["image"]: row for row in meta_rows}
    rows, dropped_unknown, dropped = [], 0, dict.fromkeys(drop_collections, 0)
    for line, truth in enumerate(truth_rows, start=2):
        code = diagnosis(truth, ground_truth, line)
        if code == UNKNOWN:
            dropped_unknown += 1
            continue
        image_id = truth["image"]
        extra = meta.get(image_id)
        if extra is None:
            raise DownloadError(f"{ground_truth} line {line}: image {image_id} is not in {metadata}; delete both "
                                "and re-run")
        lesion_id = (extra.get("lesion_id") or "").strip()
        collection = collection_of(image_id, lesion_id)
        if collection in dropped:
            dropped[collection] += 1
            continue
        rows.append({"lesion_id": lesion_id or image_id,  # no lesion id: the image is its own group
                     "image_id": image_id, "dx": TO_HAM10000[code], "dx_isic2019": code,
                     "age": extra.get("age_approx", ""), "sex": extra.get("sex", ""),
                     "localization": extra.get("anatom_site_general", ""), "collection": collection})
    if not rows:
        raise DownloadError(f"{ground_truth} gave no images to keep; delete it and re-run")
    per_collection: dict[str, int] = {}
    for row in rows:
        per_collection[row["collection"]] = per_collection.get(row["collection"], 0) + 1
    return rows, {"images": len(rows), "dropped_unknown": dropped_unknown, "dropped_collections": dropped,
                  "per_collection": per_collection}
