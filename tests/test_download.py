"""End-to-end tests of skinscan.factory.download against a fake Dataverse on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from skinscan.factory import download
from skinscan.factory.download import DownloadError, download_ham10000

METADATA_ROWS = [
    # lesion_id, image_id, dx, dx_type, age, sex, localization
    ("HAM_0000001", "ISIC_0000001", "bkl", "histo", "80.0", "male", "scalp"),
    ("HAM_0000001", "ISIC_0000002", "bkl", "histo", "80.0", "male", "scalp"),
    ("HAM_0000002", "ISIC_0000003", "nv", "follow_up", "", "female", "back"),
    ("HAM_0000003", "ISIC_0000004", "mel", "histo", "55.0", "unknown", "face"),
    ("HAM_0000004", "ISIC_0000005", "vasc", "consensus", "35.0", "female", "trunk"),
]
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
EXPECTED_CSV = "\n".join([",".join(COLUMNS), *(",".join(row) for row in METADATA_ROWS)]) + "\n"


def tiny_jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (shade, 80, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


IMAGES = {f"ISIC_000000{i}.jpg": tiny_jpeg(40 * i) for i in range(1, 6)}


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dataverse_tab(rows) -> bytes:
    """Metadata as Dataverse's archival .tab: tab-separated, strings quoted, numbers bare."""
    lines = ["\t".join(COLUMNS)]
    for row in rows:
        cells = [f'"{cell}"' if column != "age" else cell for column, cell in zip(COLUMNS, row, strict=True)]
        lines.append("\t".join(cells))
    return ("\n".join(lines) + "\n").encode()


PART_1 = zip_of(
    {
        "ISIC_0000001.jpg": IMAGES["ISIC_0000001.jpg"],
        "ISIC_0000002.jpg": IMAGES["ISIC_0000002.jpg"],
        "HAM10000_images_part_1/ISIC_0000003.jpg": IMAGES["ISIC_0000003.jpg"],  # flattened on unpacking
    }
)
PART_2 = zip_of(
    {"ISIC_0000004.jpg": IMAGES["ISIC_0000004.jpg"], "ISIC_0000005.jpg": IMAGES["ISIC_0000005.jpg"]}
)
METADATA_ORIGINAL_CSV = EXPECTED_CSV.replace("\n", "\r\n").encode()  # as uploaded, before ingest
METADATA_TAB = dataverse_tab(METADATA_ROWS)


@dataclass
class FakeFile:
    id: int
    filename: str
    content: bytes  # what /api/access/datafile/ID serves
    original: bytes | None = None  # what ?format=original serves (ingested tabular files only)

    def listing_entry(self) -> dict:
        served = self.original if self.original is not None else self.content
        md5 = hashlib.md5(served).hexdigest()
        data_file = {
            "id": self.id,
            "persistentId": "",
            "filename": self.filename,
            "filesize": len(self.content),
            "md5": md5,
            "checksum": {"type": "MD5", "value": md5},
            "tabularData": False,
        }
        if self.original is not None:  # Dataverse's checksum of an ingested file is of the original
            data_file.update(
                tabularData=True,
                contentType="text/tab-separated-values",
                originalFileFormat="text/csv",
                originalFormatLabel="Comma Separated Values",
                originalFileName="HAM10000_metadata.csv",
                originalFileSize=len(self.original),
            )
        return {"label": self.filename, "restricted": False, "version": 1, "dataFile": data_file}


@dataclass
class FakeDataverse:
    files: dict[int, FakeFile]
    url: str = ""
    honour_range: bool = True
    corrupt_ids: set[int] = field(default_factory=set)
    hang_up_once_ids: set[int] = field(default_factory=set)
    redirect_to_storage: bool = False  # like Harvard's, which sends downloads on to S3
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def listing(self) -> bytes:
        files = [fake.listing_entry() for fake in self.files.values()]
        data = {"id": 1, "identifier": "DVN/DBW86T", "latestVersion": {"versionNumber": 4, "files": files}}
        return json.dumps({"status": "OK", "data": data}).encode()

    def file_requests(self, file_id: int) -> list[tuple[str, str | None]]:
        return [
            r for r in self.requests if urllib.parse.urlsplit(r[0]).path == f"/api/access/datafile/{file_id}"
        ]


def make_handler(fake: FakeDataverse) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output quiet
            pass

        def do_GET(self):
            fake.requests.append((self.path, self.headers.get("Range")))
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path == "/api/datasets/:persistentId/":
                if query.get("persistentId") != ["doi:10.7910/DVN/DBW86T"]:
                    return self.send_error(404)
                return self.send_body(200, fake.listing())
            if url.path.startswith("/api/access/datafile/") and fake.redirect_to_storage:
                return self.redirect(self.path.replace("/api/access/datafile/", "/storage/"))
            if url.path.startswith(("/api/access/datafile/", "/storage/")):
                return self.send_file(int(url.path.rsplit("/", 1)[1]), query.get("format") == ["original"])
            self.send_error(404)

        def send_file(self, file_id: int, original: bool):
            fake_file = fake.files[file_id]
            body = fake_file.original if original and fake_file.original is not None else fake_file.content
            if file_id in fake.corrupt_ids:
                body = bytes(byte ^ 0xFF for byte in body)
            if file_id in fake.hang_up_once_ids:
                fake.hang_up_once_ids.discard(file_id)
                return self.send_body(200, body, declared_length=len(body), send=len(body) // 2)
            requested = self.headers.get("Range")
            if requested and fake.honour_range:
                start = int(requested.removeprefix("bytes=").rstrip("-"))
                if start >= len(body):
                    return self.send_error(416)
                return self.send_body(
                    206, body[start:], content_range=f"bytes {start}-{len(body) - 1}/{len(body)}"
                )
            self.send_body(200, body)

        def redirect(self, location):
            self.send_response(303)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def send_body(self, status, body, content_range=None, declared_length=None, send=None):
            self.send_response(status)
            self.send_header("Content-Length", str(declared_length or len(body)))
            if content_range:
                self.send_header("Content-Range", content_range)
            self.end_headers()
            self.wfile.write(body[:send])

    return Handler


def build_fake(*, metadata_ingested: bool = True, part_1: bytes = PART_1) -> FakeDataverse:
    metadata = (
        FakeFile(3, "HAM10000_metadata.tab", METADATA_TAB, original=METADATA_ORIGINAL_CSV)
        if metadata_ingested
        else FakeFile(3, "HAM10000_metadata.tab", METADATA_TAB)
    )
    other = FakeFile(4, "HAM10000_segmentations_lesion_tschandl.zip", zip_of({"x.png": b"x"}))
    files = [
        FakeFile(1, "HAM10000_images_part_1.zip", part_1),
        FakeFile(2, "HAM10000_images_part_2.zip", PART_2),
        metadata,
        other,
    ]
    return FakeDataverse(files={f.id: f for f in files})


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAYS_S", (0, 0))


@pytest.fixture
def serve():
    servers = []

    def start(fake: FakeDataverse) -> FakeDataverse:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dataverse(serve) -> FakeDataverse:
    return serve(build_fake())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_complete_dataset(out: Path) -> None:
    images = out / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(IMAGES)  # flat, and no temporary files left
    for name, data in IMAGES.items():
        assert (images / name).read_bytes() == data
    assert (out / "HAM10000_metadata.csv").read_text() == EXPECTED_CSV
    assert not list((out / "downloads").glob("*.part"))


@pytest.mark.parametrize("metadata_ingested", [True, False], ids=["ingested-csv", "plain-tab"])
def test_full_download_gives_images_and_metadata_csv(serve, tmp_path, metadata_ingested):
    fake = serve(build_fake(metadata_ingested=metadata_ingested))
    out = tmp_path / "ham"

    assert download_ham10000(out, base_url=fake.url, progress=False) == out

    assert_complete_dataset(out)
    assert list(tmp_path.iterdir()) == [out]  # wrote nothing outside OUT
    assert (out / "downloads" / "HAM10000_images_part_1.zip").read_bytes() == PART_1
    assert fake.file_requests(4) == []  # files skinscan does not need are not fetched
    metadata_paths = [path for path, _ in fake.file_requests(3)]
    assert metadata_paths == (
        ["/api/access/datafile/3?format=original"] if metadata_ingested else ["/api/access/datafile/3"]
    )


def test_partial_download_is_resumed_with_a_range_request(dataverse, tmp_path):
    downloads = tmp_path / "ham" / "downloads"
    downloads.mkdir(parents=True)
    half = len(PART_1) // 2
    (downloads / "HAM10000_images_part_1.zip.part").write_bytes(PART_1[:half])

    download_ham10000(tmp_path / "ham", base_url=dataverse.url, progress=False)

    assert dataverse.file_requests(1) == [("/api/access/datafile/1", f"bytes={half}-")]
    assert (downloads / "HAM10000_images_part_1.zip").read_bytes() == PART_1
    assert_complete_dataset(tmp_path / "ham")


def test_resume_survives_the_redirect_to_storage(serve, tmp_path):
    fake = build_fake()
    fake.redirect_to_storage = True
    serve(fake)
    downloads = tmp_path / "ham" / "downloads"
    downloads.mkdir(parents=True)
    half = len(PART_1) // 2
    (downloads / "HAM10000_images_part_1.zip.part").write_bytes(PART_1[:half])

    download_ham10000(tmp_path / "ham", base_url=fake.url, progress=False)

    assert ("/storage/1", f"bytes={half}-") in fake.requests
    assert_complete_dataset(tmp_path / "ham")


def test_server_ignoring_range_still_gives_the_right_file(serve, tmp_path):
    fake = build_fake()
    fake.honour_range = False
    serve(fake)
    downloads = tmp_path / "ham" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "HAM10000_images_part_1.zip.part").write_bytes(PART_1[: len(PART_1) // 2])

    download_ham10000(tmp_path / "ham", base_url=fake.url, progress=False)

    assert fake.file_requests(1)[0][1] is not None  # it asked for a range, got the whole file (200)
    assert (downloads / "HAM10000_images_part_1.zip").read_bytes() == PART_1
    assert_complete_dataset(tmp_path / "ham")


def test_dropped_connection_is_retried_and_resumed(serve, tmp_path):
    fake = build_fake()
    fake.hang_up_once_ids.add(1)
    serve(fake)

    download_ham10000(tmp_path / "ham", base_url=fake.url, progress=False)

    first, second = fake.file_requests(1)
    assert first[1] is None and second[1] == f"bytes={len(PART_1) // 2}-"
    assert_complete_dataset(tmp_path / "ham")


def test_corrupt_download_raises_and_leaves_nothing_that_looks_valid(serve, tmp_path):
    fake = build_fake()
    fake.corrupt_ids.add(2)
    serve(fake)
    out = tmp_path / "ham"

    with pytest.raises(DownloadError, match=r"HAM10000_images_part_2\.zip is corrupt.*re-run"):
        download_ham10000(out, base_url=fake.url, progress=False)

    names = {path.name for path in (out / "downloads").iterdir()}
    assert not names & {
        "HAM10000_images_part_2.zip",
        "HAM10000_images_part_2.zip.part",
        "HAM10000_images_part_2.zip.verified",
    }
    assert list((out / "images").iterdir()) == []
    assert not (out / "HAM10000_metadata.csv").exists()

    fake.corrupt_ids.clear()  # the server recovers: a re-run completes
    download_ham10000(out, base_url=fake.url, progress=False)
    assert_complete_dataset(out)


def test_second_run_downloads_nothing(dataverse, tmp_path):
    download_ham10000(tmp_path / "ham", base_url=dataverse.url, progress=False)
    dataverse.requests.clear()

    download_ham10000(tmp_path / "ham", base_url=dataverse.url, progress=False)

    assert [urllib.parse.urlsplit(path).path for path, _ in dataverse.requests] == [
        "/api/datasets/:persistentId/"
    ]
    assert_complete_dataset(tmp_path / "ham")


def test_without_archives_a_second_run_downloads_nothing(dataverse, tmp_path):
    out = tmp_path / "ham"
    download_ham10000(out, base_url=dataverse.url, keep_archives=False, progress=False)
    assert not list((out / "downloads").glob("*.zip"))
    dataverse.requests.clear()

    download_ham10000(out, base_url=dataverse.url, keep_archives=False, progress=False)

    assert len(dataverse.requests) == 1
    assert_complete_dataset(out)


def test_offline_rerun_uses_the_saved_file_list(dataverse, tmp_path):
    download_ham10000(tmp_path / "ham", base_url=dataverse.url, progress=False)

    download_ham10000(tmp_path / "ham", base_url=closed_port_url(), progress=False)

    assert_complete_dataset(tmp_path / "ham")


def test_unreachable_server_says_what_to_do(tmp_path):
    with pytest.raises(
        DownloadError, match=r"cannot reach 127\.0\.0\.1: .*https://doi\.org/10\.7910/DVN/DBW86T"
    ):
        download_ham10000(tmp_path / "ham", base_url=closed_port_url(), progress=False)


def test_files_placed_by_hand_are_used_when_offline(tmp_path):
    downloads = tmp_path / "ham" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "HAM10000_images_part_1.zip").write_bytes(PART_1)
    (downloads / "HAM10000_images_part_2.zip").write_bytes(PART_2)
    (downloads / "HAM10000_metadata.tab").write_bytes(METADATA_TAB)

    download_ham10000(tmp_path / "ham", base_url=closed_port_url(), progress=False)

    assert_complete_dataset(tmp_path / "ham")


@pytest.mark.parametrize(
    "evil_name",
    ["../evil.jpg", "../../ISIC_0000009.jpg", "/tmp/ISIC_0000009.jpg", "images\\..\\..\\ISIC_0000009.jpg"],
)
def test_zip_with_path_traversal_is_rejected(serve, tmp_path, evil_name):
    evil_part = zip_of({"ISIC_0000001.jpg": IMAGES["ISIC_0000001.jpg"], evil_name: b"evil"})
    fake = serve(build_fake(part_1=evil_part))
    out = tmp_path / "ham"

    with pytest.raises(DownloadError, match="unsafe path"):
        download_ham10000(out, base_url=fake.url, progress=False)

    assert list(tmp_path.iterdir()) == [out]
    assert list((out / "images").iterdir()) == []
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and path.read_bytes() == b"evil"]
