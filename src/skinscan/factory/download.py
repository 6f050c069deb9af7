"""Download the official full-resolution HAM10000 release from Harvard Dataverse, resumable and checksummed.

Unpacks it into the layout skinscan reads: OUT/images/ISIC_*.jpg and OUT/HAM10000_metadata.csv.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from tqdm import tqdm

from skinscan import __version__

__all__ = ["DATAVERSE_URL", "HAM10000_DOI", "DownloadError", "download_ham10000"]

DATAVERSE_URL = "https://dataverse.harvard.edu"
HAM10000_DOI = "doi:10.7910/DVN/DBW86T"
HAM10000_PAGE = "https://doi.org/10.7910/DVN/DBW86T"

IMAGE_ARCHIVES = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip")
METADATA_STEM = "HAM10000_metadata"
METADATA_CSV = "HAM10000_metadata.csv"
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_NAME = re.compile(r"ISIC_\d+\.jpg")

TIMEOUT_S = 60  # per socket operation, not per file
RETRY_DELAYS_S = (2, 10)  # waits before the second and the third attempt
CHUNK_BYTES = 1 << 20
USER_AGENT = f"skinscan/{__version__} (python urllib)"
# Dataverse names checksum algorithms as "MD5", "SHA-1", "SHA-256", "SHA-512".
HASHLIB_NAMES = {
    "md5": "md5",
    "sha-1": "sha1",
    "sha1": "sha1",
    "sha-256": "sha256",
    "sha256": "sha256",
    "sha-512": "sha512",
    "sha512": "sha512",
}

logger = logging.getLogger(__name__)
T = TypeVar("T")


class DownloadError(Exception):
    """A download, checksum or unpacking step failed; the message says what to do about it."""


class ServerUnreachable(DownloadError):
    """The server could not be reached even after retries (as opposed to answering with an error)."""


@dataclass(frozen=True)
class Origin:
    """Who publishes a release, for the messages that say where to get a file by hand when a download fails."""

    host: str  # "Dataverse", "the ISIC archive"
    page: str  # where a person downloads the files
    by_hand: str  # which files to put in OUT/downloads


HAM10000_ORIGIN = Origin("Dataverse", HAM10000_PAGE, f"{', '.join(IMAGE_ARCHIVES)} and {METADATA_STEM}.tab")


@dataclass(frozen=True)
class DatasetFile:
    """One file of the release, as it will be stored in OUT/downloads."""

    name: str
    url: str | None  # None: placed by hand and no listing to download it from
    size: int | None
    checksum_type: str | None  # a hashlib name: "md5", "sha256", ...
    checksum: str | None

    @property
    def checksum_label(self) -> str | None:
        return f"{self.checksum_type}:{self.checksum}" if self.checksum else None


@dataclass(frozen=True)
class Release:
    archives: tuple[DatasetFile, ...]
    metadata: DatasetFile


def download_ham10000(
    out_dir: str | os.PathLike[str],
    base_url: str = DATAVERSE_URL,
    *,
    keep_archives: bool = True,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack HAM10000 into out_dir; safe to interrupt and re-run.

    Writes only inside out_dir: downloads (and partial `.part` downloads) go to out_dir/downloads,
    images to out_dir/images/ISIC_*.jpg, the metadata to out_dir/HAM10000_metadata.csv.
    Returns out_dir. Raises DownloadError with what to do when something fails.
    """
    out = Path(out_dir)
    downloads, images = out / "downloads", out / "images"
    downloads.mkdir(parents=True, exist_ok=True)
    images.mkdir(exist_ok=True)

    release = list_release_files(base_url, downloads)
    to_unpack = [a for a in release.archives if not images_already_unpacked(a, downloads, images)]
    # Everything is downloaded and verified before anything is unpacked: a bad file stops the run
    # before it can leave a half-made dataset behind.
    for dataset_file in [*to_unpack, release.metadata]:
        fetch_verified(dataset_file, downloads, progress=progress)
    for archive in to_unpack:
        unpacked = unpack_images(downloads / archive.name, images, progress=progress)
        record_unpacked(archive, downloads, unpacked)

    image_ids = write_metadata_csv(downloads / release.metadata.name, out / METADATA_CSV)
    check_images_present(image_ids, images, downloads)
    if not keep_archives:
        for archive in release.archives:
            (downloads / archive.name).unlink(missing_ok=True)
            verified_stamp(downloads / archive.name).unlink(missing_ok=True)
    return out


# --- which files: the Dataverse dataset listing ---------------------------------------------------


def dataset_listing_url(base_url: str) -> str:
    query = urllib.parse.urlencode({"persistentId": HAM10000_DOI})
    return f"{base_url.rstrip('/')}/api/datasets/:persistentId/?{query}"


def datafile_url(base_url: str, file_id: int, *, original: bool) -> str:
    url = f"{base_url.rstrip('/')}/api/access/datafile/{file_id}"
    # Dataverse ingests uploaded CSVs into .tab files; format=original serves the uploaded bytes,
    # which are also what the listed checksum is of.
    return f"{url}?format=original" if original else url


def list_release_files(base_url: str, downloads: Path) -> Release:
    """The files to fetch, from the live listing; offline, from a cached listing or files placed by hand."""
    cached_listing = downloads / "dataset.json"
    try:
        listing = fetch_dataset_listing(base_url, downloads)
    except ServerUnreachable:
        if cached_listing.is_file():
            logger.warning("Dataverse unreachable; using the file list saved in %s", cached_listing)
            return select_release_files(json.loads(cached_listing.read_text()), base_url)
        by_hand = files_placed_by_hand(downloads)
        if by_hand is None:
            raise
        logger.warning("Dataverse unreachable; using the files in %s without checksums", downloads)
        return by_hand
    write_bytes_atomically(cached_listing, json.dumps(listing, indent=1).encode())
    return select_release_files(listing, base_url)


def fetch_dataset_listing(base_url: str, downloads: Path) -> dict:
    url = dataset_listing_url(base_url)

    def fetch() -> bytes:
        with open_url(url) as response:
            return response.read()

    body = call_with_retries(fetch, url, downloads)
    try:
        listing = json.loads(body)
    except ValueError as error:
        message = f"{url} did not answer with JSON ({error}); is {base_url} a Dataverse server?"
        raise DownloadError(message) from None
    if listing.get("status") != "OK":
        status, message = listing.get("status"), listing.get("message")
        raise DownloadError(f"Dataverse answered {status!r} for {url}: {message}")
    return listing


def select_release_files(listing: dict, base_url: str) -> Release:
    try:
        entries = [entry["dataFile"] for entry in listing["data"]["latestVersion"]["files"]]
    except (KeyError, TypeError):
        message = f"unexpected Dataverse listing for {HAM10000_DOI}: no data.latestVersion.files"
        raise DownloadError(message) from None
    by_name = {entry.get("filename"): entry for entry in entries}
    metadata = [e for e in entries if PurePosixPath(str(e.get("filename"))).stem == METADATA_STEM]
    missing = [name for name in IMAGE_ARCHIVES if name not in by_name]
    if missing or not metadata:
        missing += [] if metadata else [f"{METADATA_STEM}.*"]
        raise DownloadError(
            f"the Dataverse listing of {HAM10000_DOI} has no {', '.join(missing)} "
            f"(it lists: {', '.join(sorted(map(str, by_name)))}); the release may have changed: "
            f"see {HAM10000_PAGE}"
        )
    archives = tuple(dataset_file_from_listing(by_name[name], base_url) for name in IMAGE_ARCHIVES)
    return Release(archives=archives, metadata=dataset_file_from_listing(metadata[0], base_url))


def dataset_file_from_listing(entry: dict, base_url: str) -> DatasetFile:
    """A listing entry (`dataFile`) as a DatasetFile; ingested tabular files are fetched as uploaded."""
    ingested = bool(entry.get("tabularData")) or "originalFileFormat" in entry
    if ingested:
        name = entry.get("originalFileName") or original_file_name(entry)
        size = entry.get("originalFileSize")
    else:
        name, size = entry["filename"], entry.get("filesize")
    checksum_type, checksum = listed_checksum(entry)
    return DatasetFile(
        name=checked_file_name(name),
        url=datafile_url(base_url, int(entry["id"]), original=ingested),
        size=int(size) if size is not None else None,
        checksum_type=checksum_type,
        checksum=checksum,
    )


def original_file_name(entry: dict) -> str:
    stem = PurePosixPath(entry["filename"]).stem
    return f"{stem}.csv" if entry.get("originalFileFormat") == "text/csv" else f"{stem}.orig"


def listed_checksum(entry: dict) -> tuple[str | None, str | None]:
    checksum = entry.get("checksum") or {}
    if checksum.get("value"):
        checksum_type = str(checksum.get("type", ""))
        algorithm = HASHLIB_NAMES.get(checksum_type.lower())
        if algorithm is None:
            raise DownloadError(f"unsupported checksum type {checksum_type!r} for {entry.get('filename')}")
        return algorithm, str(checksum["value"]).lower()
    if entry.get("md5"):
        return "md5", str(entry["md5"]).lower()
    return None, None


def checked_file_name(name: str) -> str:
    """A server-given name, refused unless it is a plain file name (it must not lead outside OUT)."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
        raise DownloadError(f"refusing the file name {name!r} from the Dataverse listing: not a file name")
    return name


def files_placed_by_hand(downloads: Path) -> Release | None:
    """The release as files a user put in OUT/downloads by hand (no checksums to check), if all are there."""
    archives = [downloads / name for name in IMAGE_ARCHIVES]
    metadata = [downloads / f"{METADATA_STEM}{suffix}" for suffix in (".csv", ".tab", ".txt", "")]
    metadata = [path for path in metadata if path.is_file()]
    if not all(path.is_file() for path in archives) or not metadata:
        return None

    def unverified(path: Path) -> DatasetFile:
        return DatasetFile(path.name, url=None, size=None, checksum_type=None, checksum=None)

    return Release(archives=tuple(map(unverified, archives)), metadata=unverified(metadata[0]))


# --- fetching one file: resumable, retried, verified ----------------------------------------------


def verified_stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def fetch_verified(dataset_file: DatasetFile, downloads: Path, *, progress: bool,
                   origin: Origin = HAM10000_ORIGIN) -> Path:
    """OUT/downloads/NAME, downloaded (resuming NAME.part) and verified unless it already was."""
    target = downloads / dataset_file.name
    if target.is_file() and already_verified(target, dataset_file):
        return target
    if target.is_file():
        if dataset_file.checksum is None:
            logger.warning("%s has no checksum to check it against; using it as it is", target)
            return target
        if file_matches(target, dataset_file):
            record_verified(target, dataset_file)
            return target
        logger.warning("%s does not match its checksum; downloading it again", target)
        target.unlink()
    if dataset_file.url is None:
        raise DownloadError(
            f"{target} is missing; download it by hand from {origin.page} into {downloads} and re-run"
        )
    part = target.with_name(target.name + ".part")
    call_with_retries(
        lambda: download_to_part(dataset_file, part, progress=progress), dataset_file.url, downloads, origin
    )
    if not file_matches(part, dataset_file):
        part.unlink()
        raise DownloadError(checksum_mismatch_message(dataset_file, downloads, origin))
    os.replace(part, target)
    record_verified(target, dataset_file)
    return target


def download_to_part(dataset_file: DatasetFile, part: Path, *, progress: bool) -> None:
    """Download into NAME.part, continuing from its current length with a Range request."""
    assert dataset_file.url is not None
    offset = part.stat().st_size if part.exists() else 0
    if dataset_file.size is not None and offset > dataset_file.size:
        part.unlink()
        offset = 0
    if dataset_file.size is not None and offset == dataset_file.size:
        return  # complete already; the checksum decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = open_url(dataset_file.url, headers)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after `offset`: the part is whole, the checksum decides
            return
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and not content_range_starts_at(response, offset):
            part.unlink()
            raise DownloadError(f"{dataset_file.url} answered a Range request with the wrong bytes; re-run")
        # A server that ignores Range answers 200 with the whole file: start again from byte 0.
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        expected_end = start + int(length) if length else None
        with part.open("ab" if resumed else "wb") as sink, progress_bar(dataset_file, start, progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                sink.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if expected_end is not None and received < expected_end:
        # http.client returns a short body without raising when the peer hangs up; retrying resumes it.
        raise ConnectionError(f"connection closed after {received} of {expected_end} bytes")


def content_range_starts_at(response: http.client.HTTPResponse, offset: int) -> bool:
    return (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")


def progress_bar(dataset_file: DatasetFile, start: int, enabled: bool) -> tqdm:
    return tqdm(
        total=dataset_file.size,
        initial=start,
        desc=dataset_file.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
    )


def file_matches(path: Path, dataset_file: DatasetFile) -> bool:
    if dataset_file.size is not None and path.stat().st_size != dataset_file.size:
        return False
    if dataset_file.checksum is None:
        logger.warning("no checksum is listed for %s; checked its size only", dataset_file.name)
        return True
    return file_digest(path, dataset_file.checksum_type or "md5") == dataset_file.checksum


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def already_verified(path: Path, dataset_file: DatasetFile) -> bool:
    """True when NAME.verified says this very file (same checksum, same size) was verified before."""
    stamp = verified_stamp(path)
    if dataset_file.checksum is None or not stamp.is_file():
        return False
    return stamp.read_text().strip() == f"{dataset_file.checksum_label} {path.stat().st_size}"


def record_verified(path: Path, dataset_file: DatasetFile) -> None:
    if dataset_file.checksum is not None:
        stamp = f"{dataset_file.checksum_label} {path.stat().st_size}\n"
        write_bytes_atomically(verified_stamp(path), stamp.encode())


def checksum_mismatch_message(dataset_file: DatasetFile, downloads: Path, origin: Origin = HAM10000_ORIGIN) -> str:
    return (
        f"{dataset_file.name} is corrupt: its size or {dataset_file.checksum_type} checksum differs from "
        f"what {origin.host} lists ({dataset_file.size} bytes, {dataset_file.checksum}); the bad download "
        f"was deleted. "
        f"Re-run to download it again; if it fails again, download {dataset_file.name} by hand from "
        f"{origin.page} into {downloads} and re-run."
    )


# --- HTTP: one request, retries, errors that say what to do ---------------------------------------


def open_url(url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # follows Dataverse's redirects to storage


def is_transient(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    transient = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
    return isinstance(error, transient)


def call_with_retries(action: Callable[[], T], url: str, downloads: Path, origin: Origin = HAM10000_ORIGIN) -> T:
    """action(), tried again after RETRY_DELAYS_S on connection errors, timeouts and 5xx answers."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return action()
        except (OSError, http.client.HTTPException) as error:  # urllib's HTTPError is an OSError too
            http_error = error if isinstance(error, urllib.error.HTTPError) else None
            if not is_transient(error):
                if http_error is None:
                    raise
                raise DownloadError(http_error_message(url, http_error, downloads, origin)) from error
            if delay is None:
                message = (
                    http_error_message(url, http_error, downloads, origin)
                    if http_error
                    else unreachable_message(url, error, downloads, origin)
                )
                raise ServerUnreachable(message) from error
            logger.warning("%s: %s; trying again in %s s", url, error, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises


def unreachable_message(url: str, error: BaseException, downloads: Path, origin: Origin = HAM10000_ORIGIN) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"cannot reach {urllib.parse.urlsplit(url).hostname}: {reason}; check your connection or download "
        f"the files by hand from {origin.page} ({origin.by_hand}) into {downloads} and re-run"
    )


def http_error_message(url: str, error: urllib.error.HTTPError, downloads: Path,
                       origin: Origin = HAM10000_ORIGIN) -> str:
    status = f"HTTP {error.code} {error.reason}"
    if error.code in (401, 403):
        return (
            f"{origin.host} refused {url} ({status}); the file may need its terms accepted in a browser: "
            f"download it by hand from {origin.page} into {downloads} and re-run"
        )
    if error.code == 404:
        return f"{url} was not found ({status}); the release may have moved: see {origin.page}"
    return f"{url} failed ({status}); try again later, or download the files by hand from {origin.page}"


# --- unpacking: safe paths, atomic writes ---------------------------------------------------------


def unpacked_stamp(downloads: Path, archive: DatasetFile) -> Path:
    return downloads / f"{archive.name}.unpacked.json"


def images_already_unpacked(archive: DatasetFile, downloads: Path, images: Path) -> bool:
    """True when this very archive was unpacked before and every image it held is still in place."""
    stamp = unpacked_stamp(downloads, archive)
    if not stamp.is_file():
        return False
    record = json.loads(stamp.read_text())
    if record.get("checksum") != archive.checksum_label:
        return False
    return all(
        (images / name).is_file() and (images / name).stat().st_size == size
        for name, size in record.get("images", {}).items()
    )


def record_unpacked(archive: DatasetFile, downloads: Path, unpacked: dict[str, int]) -> None:
    record = {"checksum": archive.checksum_label, "images": unpacked}
    write_bytes_atomically(unpacked_stamp(downloads, archive), json.dumps(record).encode())


def unpack_images(archive: Path, images: Path, *, progress: bool, pattern: re.Pattern = IMAGE_NAME) -> dict[str, int]:
    """Extract the ISIC_*.jpg of a zip flat into images/; returns {file name: size}."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = [member for member in zip_file.infolist() if not member.is_dir()]
            for member in members:
                check_member_path_is_safe(member.filename, archive)
            wanted = [m for m in members if pattern.fullmatch(PurePosixPath(m.filename).name)]
            if not wanted:
                raise DownloadError(f"{archive} holds no ISIC_*.jpg images; delete it and re-run")
            for member in tqdm(wanted, desc=f"unpacking {archive.name}", unit="img", disable=not progress):
                extract_member_atomically(zip_file, member, images / PurePosixPath(member.filename).name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise DownloadError(
            f"{archive} cannot be unpacked ({error}); delete it and {archive.name}.verified and re-run"
        ) from error
    return {PurePosixPath(m.filename).name: m.file_size for m in wanted}


def check_member_path_is_safe(member_name: str, archive: Path) -> None:
    """Refuse archives whose entries point outside the folder they unpack into (zip path traversal)."""
    path = PurePosixPath(member_name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"[A-Za-z]:", member_name):
        raise DownloadError(
            f"{archive} holds an unsafe path {member_name!r}; refusing to unpack it. "
            f"Delete {archive} and re-run; if it happens again, report it"
        )


def extract_member_atomically(zip_file: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    """Write under a temporary name, then rename: an interrupted run leaves no half image named ISIC_*."""
    if target.is_file() and target.stat().st_size == member.file_size:
        return
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        with zip_file.open(member) as source, temporary.open("wb") as sink:
            shutil.copyfileobj(source, sink, CHUNK_BYTES)  # zipfile checks the CRC at the end
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# --- the metadata: comma-separated, the columns skinscan reads ------------------------------------


def write_metadata_csv(source: Path, target: Path) -> list[str]:
    """Rewrite downloaded metadata (CSV or Dataverse's tab-separated form) as target; returns image ids."""
    text = source.read_text(encoding="utf-8-sig")
    delimiter = "\t" if "\t" in text.partition("\n")[0] else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = [column for column in METADATA_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise DownloadError(f"{source} lacks the columns {', '.join(missing)}; delete it and re-run")
    rows = [[row.get(column) or "" for column in METADATA_COLUMNS] for row in reader]
    if not rows:
        raise DownloadError(f"{source} holds no rows; delete it and re-run")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    writer.writerows(rows)
    write_bytes_atomically(target, buffer.getvalue().encode())
    return [row[METADATA_COLUMNS.index("image_id")] for row in rows]


def check_images_present(image_ids: list[str], images: Path, downloads: Path) -> None:
    missing = [image_id for image_id in image_ids if not (images / f"{image_id}.jpg").is_file()]
    if missing:
        raise DownloadError(
            f"{len(missing)} images named in {METADATA_CSV} are not in {images} (e.g. {missing[0]}.jpg); "
            f"delete {downloads}/*.unpacked.json and re-run"
        )
