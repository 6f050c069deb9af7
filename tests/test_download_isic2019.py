"""`skinscan data download --dataset isic2019` against a fake ISIC bucket on 127.0.0.1 (never the internet):
conversion to a source `skinscan data split` reads, resume after a cut, recorded checksums, server down, bad zip."""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from skinscan.cli import main
from skinscan.factory import download
from skinscan.factory.download import DownloadError
from skinscan.factory.download_isic2019 import (
    CHECKSUMS,
    GROUND_TRUTH_CSV,
    IMAGES_ZIP,
    METADATA_CSV,
    download_isic2019,
)

CODES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# image, diagnosis, lesion_id, age, site, sex
ROWS = [
    ("ISIC_0000000", "NV", "", "55", "anterior torso", "female"),  # ISIC Archive: no lesion id
    ("ISIC_0000001_downsampled", "MEL", "MSK4_0000001", "30", "lower extremity", "male"),
    ("ISIC_0024306", "NV", "HAM_0000118", "80", "back", "male"),  # a HAM10000 image
    ("ISIC_0053453", "AK", "BCN_0000001", "70", "head/neck", "female"),
    ("ISIC_0053454", "SCC", "BCN_0000002", "75", "head/neck", "male"),
    ("ISIC_0053455", "BCC", "BCN_0000004", "75", "head/neck", "male"),
    ("ISIC_0053456", "UNK", "BCN_0000003", "60", "", "female"),  # dropped
]


def tiny_jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (shade, 90, 140)).save(buffer, format="JPEG")
    return buffer.getvalue()


def archive_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, row in enumerate(ROWS):
            archive.writestr(f"ISIC_2019_Training_Input/{row[0]}.jpg", tiny_jpeg(30 * i))
        archive.writestr("ISIC_2019_Training_Input/LICENSE.txt", b"CC-BY-NC")
        archive.writestr("ISIC_2019_Training_Input/ATTRIBUTION.txt", b"ISIC")
    return buffer.getvalue()


def ground_truth_bytes() -> bytes:
    lines = [",".join(("image", *CODES))]
    lines += [",".join((row[0], *("1.0" if code == row[1] else "0.0" for code in CODES))) for row in ROWS]
    return ("\n".join(lines) + "\n").encode()


def metadata_bytes() -> bytes:
    lines = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    lines += [f"{row[0]},{row[3]},{row[4]},{row[2]},{row[5]}" for row in ROWS]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class FakeBucket:
    files: dict[str, bytes] = field(default_factory=lambda: {IMAGES_ZIP: archive_bytes(),
                                                             GROUND_TRUTH_CSV: ground_truth_bytes(),
                                                             METADATA_CSV: metadata_bytes()})
    url: str = ""
    hang_up_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, name, Range)

    def gets(self, name: str) -> list[str | None]:
        return [r for m, n, r in self.requests if m == "GET" and n == name]


def make_handler(bucket: FakeBucket) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def find(self) -> tuple[str, bytes] | None:
            name = self.path.removeprefix("/2019/")
            return (name, bucket.files[name]) if self.path.startswith("/2019/") and name in bucket.files else None

        def do_HEAD(self):
            found = self.find()
            bucket.requests.append(("HEAD", found[0] if found else self.path, None))
            if found is None:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(found[1])))
            self.end_headers()

        def do_GET(self):
            found = self.find()
            requested = self.headers.get("Range")
            bucket.requests.append(("GET", found[0] if found else self.path, requested))
            if found is None:
                return self.send_error(404)
            name, body = found
            start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
            if start >= len(body) and requested:
                return self.send_error(416)
            self.send_response(206 if requested else 200)
            self.send_header("Content-Length", str(len(body) - start))
            if requested:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if name in bucket.hang_up_once:  # the connection drops halfway
                bucket.hang_up_once.discard(name)
                self.wfile.write(body[start:start + (len(body) - start) // 2])
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAYS_S", (0, 0))


@pytest.fixture
def bucket():
    fake = FakeBucket()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/2019"
    yield fake
    server.shutdown()
    server.server_close()


def test_download_converts_isic2019_into_a_source(bucket, tmp_path):
    out, summary = download_isic2019(tmp_path / "isic", base_url=bucket.url, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{row[0]}.jpg" for row in ROWS)
    table = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["lesion_id", "image_id", "dx", "dx_isic2019", "age", "sex", "localization",
                                   "collection"]
    by_id = table.set_index("image_id")
    assert "ISIC_0053456" not in by_id.index and summary["dropped_unknown"] == 1  # UNK dropped, counted
    assert by_id.loc["ISIC_0053453", "dx"] == by_id.loc["ISIC_0053454", "dx"] == "akiec"  # AK and SCC
    assert by_id.loc["ISIC_0053454", "dx_isic2019"] == "SCC"
    assert by_id.loc["ISIC_0000000", "lesion_id"] == "ISIC_0000000"  # no lesion id: its own group
    assert dict(zip(by_id.index, by_id.collection, strict=True)) == {
        "ISIC_0000000": "isic_archive", "ISIC_0000001_downsampled": "msk", "ISIC_0024306": "ham10000",
        "ISIC_0053453": "bcn20000", "ISIC_0053454": "bcn20000", "ISIC_0053455": "bcn20000"}
    assert by_id.loc["ISIC_0000001_downsampled", "localization"] == "lower extremity"
    recorded = json.loads((out / "downloads" / CHECKSUMS).read_text())
    assert set(recorded) == {IMAGES_ZIP, GROUND_TRUTH_CSV, METADATA_CSV}
    assert recorded[IMAGES_ZIP]["size"] == len(bucket.files[IMAGES_ZIP])
    assert not list((out / "downloads").glob("*.part"))

    # A second run downloads nothing: the files are checked against the recorded sha256, the images are in place.
    bucket.requests.clear()
    download_isic2019(out, base_url=bucket.url, progress=False)
    assert [r for r in bucket.requests if r[0] == "GET"] == []


def test_the_converted_folder_is_a_source_for_data_split(bucket, tmp_path, capsys):
    out = tmp_path / "isic"
    assert main(["data", "download", "--dataset", "isic2019", "--out", str(out), "--base-url", bucket.url,
                 "--drop-collection", "ham10000"]) == 0
    printed = capsys.readouterr().out
    assert "5 images" in printed and "dropped 1 labelled UNK" in printed and "left out 1 ham10000" in printed
    assert "ISIC_0024306" not in (out / "metadata.csv").read_text()
    split = tmp_path / "split.csv"
    assert main(["data", "split", "--source", f"isic2019={out}", "--out", str(split),
                 "--fractions", "0.34", "0.33", "0.33"]) == 0
    assert set(pd.read_csv(split).collection) == {"isic_archive", "msk", "bcn20000"}


def test_a_cut_download_is_resumed_with_a_range_request(bucket, tmp_path):
    bucket.hang_up_once.add(IMAGES_ZIP)
    out, _ = download_isic2019(tmp_path / "isic", base_url=bucket.url, progress=False)
    ranges = bucket.gets(IMAGES_ZIP)
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    assert (out / "downloads" / IMAGES_ZIP).read_bytes() == bucket.files[IMAGES_ZIP]

    # A .part left by an interrupted run is continued, not started again.
    downloads = tmp_path / "again" / "downloads"
    downloads.mkdir(parents=True)
    half = len(bucket.files[GROUND_TRUTH_CSV]) // 2
    (downloads / f"{GROUND_TRUTH_CSV}.part").write_bytes(bucket.files[GROUND_TRUTH_CSV][:half])
    bucket.requests.clear()
    download_isic2019(tmp_path / "again", base_url=bucket.url, progress=False)
    assert bucket.gets(GROUND_TRUTH_CSV) == [f"bytes={half}-"]


def test_a_file_that_differs_from_its_recorded_checksum_is_refused(bucket, tmp_path):
    out, _ = download_isic2019(tmp_path / "isic", base_url=bucket.url, progress=False)
    (out / "downloads" / GROUND_TRUTH_CSV).unlink()
    original = bucket.files[GROUND_TRUTH_CSV]
    bucket.files[GROUND_TRUTH_CSV] = original.replace(b"1.0", b"2.0", 1)  # same size, other bytes
    with pytest.raises(DownloadError, match=rf"{GROUND_TRUTH_CSV} is corrupt: its size or sha256"):
        download_isic2019(out, base_url=bucket.url, progress=False)
    assert not (out / "downloads" / GROUND_TRUTH_CSV).exists()
    assert not (out / "downloads" / f"{GROUND_TRUTH_CSV}.part").exists()


def test_a_truncated_download_is_refused_by_its_size(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAYS_S", ())  # one attempt: the cut is not retried
    bucket.hang_up_once.add(METADATA_CSV)
    with pytest.raises(DownloadError, match="cannot reach|connection closed"):
        download_isic2019(tmp_path / "isic", base_url=bucket.url, progress=False)
    assert not (tmp_path / "isic" / "metadata.csv").exists()
    assert not (tmp_path / "isic" / "downloads" / METADATA_CSV).exists()


def test_server_down_says_what_to_do(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["data", "download", "--dataset", "isic2019", "--out", str(tmp_path / "isic"), "--base-url",
                 f"http://127.0.0.1:{port}/2019"]) == 2
    error = capsys.readouterr().err
    assert "cannot reach 127.0.0.1" in error and IMAGES_ZIP in error and "challenge.isic-archive.com" in error
    assert "Traceback" not in error


def test_a_corrupt_zip_is_deleted_and_nothing_is_recorded(bucket, tmp_path):
    bucket.files[IMAGES_ZIP] = b"PK\x03\x04 this is not really a zip archive" * 10
    out = tmp_path / "isic"
    with pytest.raises(DownloadError, match=rf"{IMAGES_ZIP} was downloaded whole but cannot be unpacked"):
        download_isic2019(out, base_url=bucket.url, progress=False)
    assert not (out / "downloads" / IMAGES_ZIP).exists()
    assert not (out / "downloads" / CHECKSUMS).exists()  # a bad download never becomes the reference
    assert not (out / "metadata.csv").exists()
    bucket.files[IMAGES_ZIP] = archive_bytes()  # the server is fixed: a re-run completes
    download_isic2019(out, base_url=bucket.url, progress=False)
    assert (out / "metadata.csv").is_file()


def test_the_default_urls_are_the_isic_challenge_bucket():
    from skinscan.factory.download_isic2019 import ISIC_BUCKET_URL

    assert ISIC_BUCKET_URL == "https://isic-challenge-data.s3.amazonaws.com/2019"
    assert Path(IMAGES_ZIP).name == "ISIC_2019_Training_Input.zip"
