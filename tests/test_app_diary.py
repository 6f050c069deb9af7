"""Tests of the app's lesion diary (`src/skinscan/app/diary.js`, `diary-view.js`): its crypto in Node, and the
whole flow in headless Chromium on the bundled model (tests/browser/drive_diary.mjs): what IndexedDB holds is
ciphertext only, a wrong passphrase is refused and changes nothing, export -> delete everything -> import gives
the same entries back, delete leaves no database, it works offline, and no request leaves 127.0.0.1.
Browser tests need `bash scripts/setup_browser.sh` (Chromium + playwright-core) and skip without it.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from skinscan.runtime.classifier import bundled_package_dir

BROWSER_DIR = Path(__file__).parent / "browser"
DRIVER = BROWSER_DIR / "drive_diary.mjs"
PASSPHRASE = "purple otter at dawn"
# Names, sites and answers that must never appear in clear in what the browser stores.
FIRST = {"lesion": "Mole on left shoulder", "site": "Left shoulder blade"}
DARK = {"lesion": "Freckle by the navel", "site": "Abdomen", "date": "2025-05-01"}
FROZEN = {"lesion": "Spot on right shin", "site": "Right leg", "date": "2025-07-20"}
DATES = ("2025-03-02", "2025-06-14")


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed; run `bash scripts/setup_browser.sh`")
    return path


def test_diary_crypto_in_node():
    """diary.js's key derivation, sealing, key check and backup parsing (tests/browser/diary_crypto.test.mjs)."""
    result = subprocess.run([node(), "--test", str(BROWSER_DIR / "diary_crypto.test.mjs")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"^# pass [1-9]", result.stdout, re.M) and re.search(r"^# fail 0$", result.stdout, re.M)


# ------------------------------------------------------------------------------------------------ browser
def drive(config: dict, tmp_path: Path, timeout: int = 240) -> dict:
    """Run drive_diary.mjs with `config`; its JSON result (failing the test if the run failed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed; run `bash scripts/setup_browser.sh`")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core is not installed; run `bash scripts/setup_browser.sh`")
    package = bundled_package_dir()
    if not (package / "manifest.json").is_file():
        pytest.skip(f"no bundled model package in {package}")
    config_path = tmp_path / f"{config['scenario']}.json"
    server = [sys.executable, "-m", "skinscan.cli", "app", "--port", "0"]  # the bundled model, as by default
    config_path.write_text(json.dumps({"chromium": chromium, "server": server, "passphrase": PASSPHRASE,
                                       "out": str(tmp_path), **config}))
    result = subprocess.run([node(), str(DRIVER), str(config_path)], capture_output=True, text=True,
                            timeout=timeout, cwd=BROWSER_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["ok"], document.get("failure", "") + "\n" + result.stderr[-2000:]
    return document


def same_lesion_photos(ham10000_dir: Path) -> list[Path]:
    """Two HAM10000 photos of one melanoma (the data set has several per lesion): a lesion "over time"."""
    groups = defaultdict(list)
    with open(ham10000_dir / "HAM10000_metadata.csv", newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda row: row["image_id"]):
            groups[row["lesion_id"]].append(row)
    rows = next(rows for _, rows in sorted(groups.items()) if len(rows) >= 2 and rows[0]["dx"] == "mel")
    return [ham10000_dir / "images" / f"{row['image_id']}.jpg" for row in rows[:2]]


@pytest.fixture(scope="module")
def photos(ham10000_dir, tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("diary_photos")
    dark = tmp / "dark.png"  # the bundled model's gate answers "too dark": a "cannot assess" entry
    Image.new("RGB", (400, 300), (5, 5, 5)).save(dark)
    return SimpleNamespace(lesion=same_lesion_photos(ham10000_dir), dark=dark)


@pytest.fixture(scope="module")
def diary_run(photos, tmp_path_factory) -> dict:
    """One browser session: set up, save four entries (two photos of one lesion, a "cannot assess" photo, a
    frozen camera frame), lock, wrong passphrase, export, delete everything, refused imports, import."""
    tmp = tmp_path_factory.mktemp("diary_run")
    lesions = [{"photo": str(photo), **FIRST, "date": date} for photo, date in zip(photos.lesion, DATES, strict=True)]
    lesions.append({"photo": str(photos.dark), **DARK})
    return drive({"scenario": "diary", "lesions": lesions, "frozen": FROZEN}, tmp)


def stored_bytes(raw: dict) -> bytes:
    """Everything in a raw IndexedDB dump as one byte string: keys, values, and byte arrays decoded."""
    parts = []

    def walk(value):
        if isinstance(value, dict) and set(value) == {"base64"}:
            parts.append(base64.b64decode(value["base64"]))
        elif isinstance(value, dict):
            for key, item in value.items():
                parts.append(key.encode())
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            parts.append(str(value).encode())

    walk(raw["stores"])
    return b"\n".join(parts)


def test_the_diary_stores_only_ciphertext(diary_run, photos):
    raw = diary_run["raw"]
    assert raw["names"] == ["skinscan-diary"] and set(raw["stores"]) == {"meta", "entries"}
    assert len(raw["stores"]["entries"]) == 4
    blob = stored_bytes(raw)
    assert len(blob) > 4 * 2000  # the photos are in there (encrypted), not stored elsewhere
    # A JPEG starts FF D8 FF and a marker (E0-EF, DB); random ciphertext of this size holds those 4 bytes by chance
    # about once in 3,000 runs, the 3 bytes alone about once in 100, so the marker is part of the pattern.
    assert re.search(rb"\xff\xd8\xff[\xe0-\xef\xdb]", blob) is None
    forbidden = [b"\x89PNG", b"/9j/", b"iVBOR", b"JFIF", b"Exif"]  # PNG, JPEG in base64, PNG in base64, APP0/1
    for text in [*FIRST.values(), *DARK.values(), *FROZEN.values(), *DATES, "Melanoma", "melanoma", "Suspicious",
                 "too dark", "Cannot assess", "skin cancer", "dermoscopic", "lesion", "photo", "result"]:
        forbidden += [text.encode(), text.encode("utf-16-le")]
    found = [pattern for pattern in forbidden if pattern in blob]
    assert found == []
    for record in raw["stores"]["entries"]:
        assert re.fullmatch(r"[0-9a-f]{32}", record["key"])  # random ids: no name in the keys
        assert set(record["value"]) == {"id", "iv", "data"}
        assert len(base64.b64decode(record["value"]["iv"]["base64"])) == 12
    ivs = [record["value"]["iv"]["base64"] for record in raw["stores"]["entries"]]
    assert len(set(ivs)) == len(ivs)  # a fresh IV per record
    (meta,) = raw["stores"]["meta"]
    assert meta["value"]["iterations"] >= 600_000 and len(base64.b64decode(meta["value"]["salt"]["base64"])) == 16


def test_entries_show_their_answer_and_history_is_side_by_side_in_date_order(diary_run):
    saved = diary_run["saved"]
    assert [s["saved"]["screen"] for s in saved] == ["history"] * 4
    assert saved[0]["screened"]["malignant"] is True and saved[2]["screened"]["cannotAssess"] is True
    history = diary_run["history"]
    assert history["title"] == FIRST["lesion"]
    entries = history["entries"]
    assert [e["date"] for e in entries] == list(DATES)
    assert entries[0]["top"] == entries[1]["top"] and entries[0]["left"] < entries[1]["left"]  # one row, oldest left
    for entry in entries:
        # The result screen's plain words (app/plain-words.js), then the likeliest diagnoses.
        assert entry["answer"].startswith("Some features look like skin cancer: see a dermatologist soon.")
        assert "Melanoma" in entry["answer"]
        assert max(entry["photo"]) <= 512 and min(entry["photo"]) > 0
    assert history["disclaimerVisible"] is True
    assert history["pageWidth"] <= 390  # nothing wider than the phone's screen
    lesions = {card["lesion"]: card for card in diary_run["list"]}
    assert set(lesions) == {FIRST["lesion"], DARK["lesion"], FROZEN["lesion"]}
    assert "2 photos" in lesions[FIRST["lesion"]]["text"] and FIRST["site"] in lesions[FIRST["lesion"]]["text"]
    assert lesions[FROZEN["lesion"]]["photoWidth"] == 512  # the 640x480 frozen frame, downscaled


def test_a_cannot_assess_entry_shows_the_reason_only(diary_run):
    (entry,) = diary_run["histories"][DARK["lesion"]]["entries"]
    # A darkened photo: the reason the user must act on first (with the lesion distance also over its line,
    # "not a lesion photo" ranks above "too dark"), and nothing else.
    assert entry["answer"].startswith("Cannot assess this image: ")
    assert "too dark" in entry["answer"] or "does not look like a dermoscopic photo" in entry["answer"]
    for diagnosis in ("Melanoma", "nevus", "skin cancer", "No strong sign", "%"):
        assert diagnosis not in entry["answer"]


def test_setup_refuses_weak_or_mistyped_passphrases(diary_run):
    assert diary_run["nothingToSave"]["screen"] == "nothing"
    assert diary_run["setup"]["screen"] == "setup"
    assert "at least 8 characters" in diary_run["shortPassphrase"]["error"]
    assert "differ" in diary_run["mismatch"]["error"]
    assert diary_run["created"]["screen"] == "list"


def test_a_wrong_passphrase_is_refused_and_touches_nothing(diary_run):
    assert diary_run["locked"]["screen"] == "unlock"
    wrong = diary_run["wrongPassphrase"]
    assert wrong["screen"] == "unlock" and wrong["error"].startswith("Wrong passphrase")
    assert diary_run["rawAfterWrong"] == diary_run["raw"]  # not a byte changed
    assert diary_run["unlocked"]["screen"] == "list"
    assert diary_run["afterReload"]["screen"] == "unlock"  # a reloaded page starts locked


def test_export_delete_import_round_trips(diary_run):
    backup = json.loads(Path(diary_run["backup"]).read_text())
    assert diary_run["backupName"].startswith("skinscan-diary-") and diary_run["backupName"].endswith(".json")
    assert backup["format"] == "skinscan-diary-backup" and backup["version"] == 1
    assert backup["iterations"] >= 600_000 and len(backup["entries"]) == 4
    text = Path(diary_run["backup"]).read_bytes()
    assert FIRST["lesion"].encode() not in text and b"Melanoma" not in text  # the backup is ciphertext too
    assert diary_run["imported"]["message"] == "Restored 4 entries."
    assert diary_run["listAfterImport"] == diary_run["list"]
    before, after = diary_run["history"], diary_run["historyAfterImport"]
    assert [(e["date"], e["answer"], e["photo"]) for e in after["entries"]] == [
        (e["date"], e["answer"], e["photo"]) for e in before["entries"]]
    assert diary_run["rawAfterImport"]["stores"] == diary_run["raw"]["stores"]  # the same ciphertext, verbatim
    assert diary_run["importedAgain"]["message"] == "Restored 0 entries (4 already here)."
    assert diary_run["rawAfterImportAgain"]["stores"] == diary_run["raw"]["stores"]


def test_bad_backups_and_wrong_passphrases_import_nothing(diary_run):
    assert "not a skinscan diary backup" in diary_run["corruptImport"]["error"]
    assert "damaged" in diary_run["damagedImport"]["error"]
    assert diary_run["wrongImport"]["error"].startswith("Wrong passphrase")
    assert diary_run["rawAfterRefusedImports"] == {"names": [], "stores": None}  # not even an empty database
    # A backup of another diary, whose passphrase does not open the diary already on this device.
    assert "already has a diary with another passphrase" in diary_run["otherPassphraseImport"]["error"]
    assert diary_run["otherPassphraseUnchanged"] is True


def test_delete_everything_leaves_nothing(diary_run):
    assert diary_run["noDiaryRaw"] == {"names": [], "stores": None}
    assert diary_run["deleteConfirm"]["screen"] == "delete"
    assert diary_run["deleted"]["screen"] == "setup"
    assert diary_run["rawAfterDelete"] == {"names": [], "stores": None}
    assert diary_run["memoryAfterDelete"]["images"] == 0
    assert FIRST["lesion"] not in diary_run["memoryAfterDelete"]["text"]
    assert diary_run["rawAtEnd"] == {"names": [], "stores": None}


def requests_leaving(document: dict) -> list[str]:
    origin = document["url"]
    assert origin.startswith("http://127.0.0.1:")
    return [url for url in document["requests"] if not (url.startswith(origin) or url.startswith("blob:" + origin[:-1])
                                                        or url.startswith("data:"))]


def test_no_request_leaves_127_0_0_1(diary_run):
    assert any(url.endswith("diary.js") for url in diary_run["requests"])  # the log is really recording
    assert requests_leaving(diary_run) == []
    assert diary_run["errors"] == []


def test_the_diary_works_offline(photos, tmp_path):
    """First visit online; then the server is stopped, and the diary is created, filled, locked, unlocked,
    exported and deleted with the page served from the service worker's cache."""
    lesions = [{"photo": str(photo), **FIRST, "date": date} for photo, date in zip(photos.lesion, DATES, strict=True)]
    document = drive({"scenario": "offline", "lesions": lesions}, tmp_path)
    assert document["offlineShell"] is True
    assert document["created"]["screen"] == "list"
    assert [e["date"] for e in document["history"]["entries"]] == list(DATES)
    assert document["unlocked"]["screen"] == "list" and len(document["list"]) == 1
    assert len(json.loads(Path(document["backup"]).read_text())["entries"]) == 2
    assert document["rawAfterDelete"] == {"names": [], "stores": None}
    assert requests_leaving(document) == []
    assert document["errors"] == []
