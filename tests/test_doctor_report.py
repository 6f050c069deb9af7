"""Tests of the report for the doctor (skinscan.runtime.doctor_report) and of `skinscan predict` for a lay reader: no
diagnosis for an image that cannot be assessed (table, CSV; JSON only under `developer`), `--report DIR`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinscan import DISCLAIMER
from skinscan.cli import main
from skinscan.runtime.classifier import NOT_SHOWN_NOTE, Classifier, Prediction, bundled_package_dir
from skinscan.runtime.doctor_report import (
    CANNOT_ASSESS,
    FLAGGED,
    NOT_FLAGGED,
    PAGE,
    ReportModel,
    render_report,
    report_name,
    save_report,
)

NAMES = {"akiec": "Actinic keratosis", "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis-like lesion",
         "df": "Dermatofibroma", "mel": "Melanoma", "nv": "Melanocytic nevus", "vasc": "Vascular lesion"}
MODEL = ReportModel("0.1.0", "fp32", ("akiec", "bcc", "mel"), NAMES)
PHOTO = np.full((96, 128, 3), (200, 150, 140), np.uint8)  # a skin-coloured model input
CAM = np.outer(np.linspace(0, 1, 3), np.linspace(0, 1, 4)).astype(np.float32)  # hot in the lower right corner


def prediction(probabilities: dict[str, float], malignant: bool, cannot_assess: str | None = None) -> Prediction:
    top = sorted(((code, NAMES[code], p) for code, p in probabilities.items()), key=lambda t: -t[2])[:3]
    return Prediction(top=top, probabilities=probabilities, label=top[0][0], malignant=malignant,
                      malignant_probability=sum(probabilities[c] for c in MODEL.malignant_codes), source="/x/mole.jpg",
                      cam=CAM, cannot_assess=cannot_assess,
                      cannot_assess_message=None if cannot_assess is None else "the image is too dark; add light")


MELANOMA = prediction({"akiec": 0.05, "bcc": 0.05, "bkl": 0.1, "df": 0.02, "mel": 0.6, "nv": 0.15, "vasc": 0.03}, True)
NEVUS = prediction({"akiec": 0.01, "bcc": 0.01, "bkl": 0.05, "df": 0.02, "mel": 0.05, "nv": 0.85, "vasc": 0.01}, False)
DARK = prediction(dict(MELANOMA.probabilities), True, cannot_assess="too_dark")


def heat_panel(page: Image.Image) -> np.ndarray:
    """The right-hand picture box of the page (where the heat map goes), as float RGB."""
    width = PAGE[0] - 160
    box = (width - 40) // 2
    left, top = 80 + box + 40, 340
    return np.asarray(page.crop((left + 10, top + 40, left + box - 10, top + 200)), np.float64)


def saturation(pixels: np.ndarray) -> float:
    return float((pixels.max(-1) - pixels.min(-1)).mean())


# --------------------------------------------------------------------------------------------- the page
def test_the_page_says_the_result_in_plain_words():
    page = render_report(PHOTO, MELANOMA, MODEL)
    assert page.size == PAGE and page.mode == "RGB"
    words = page.info["Description"]
    assert FLAGGED in words and "Most likely type of skin cancer: Melanoma." in words
    assert "1. Melanoma: 60%" in words and "Model: skinscan 0.1.0 (fp32)" in words and "Date: " in words
    assert DISCLAIMER in words and "red: where the model looked most" in words
    nevus = render_report(PHOTO, NEVUS, MODEL).info["Description"]
    assert NOT_FLAGGED in nevus and "skin cancer:" not in nevus.replace(NOT_FLAGGED, "")


def test_an_image_that_cannot_be_assessed_gets_no_diagnosis_and_no_map():
    page = render_report(PHOTO, DARK, MODEL)
    words = page.info["Description"]
    assert CANNOT_ASSESS in words and "too dark; add light" in words and DISCLAIMER in words
    assert "%" not in words and "Melanoma" not in words and FLAGGED not in words
    assert "No heat map" in words
    # The map's box: coloured (jet) over the skin photo for a result, white with a grey frame without one.
    assert saturation(heat_panel(render_report(PHOTO, MELANOMA, MODEL))) > 2 * saturation(heat_panel(page))
    assert heat_panel(page).mean() > 240  # blank


def test_report_files_png_and_pdf(tmp_path):
    page = render_report(PHOTO, MELANOMA, MODEL)
    written, replaced = save_report(page, tmp_path, report_name(MELANOMA.source, 0))
    assert [p.name for p in written] == ["mole-report.png", "mole-report.pdf"] and replaced == []
    with Image.open(written[0]) as png:
        assert png.size == PAGE and DISCLAIMER in png.text["Description"]
        assert np.asarray(png.convert("RGB")).std() > 10  # drawn, not blank
    assert written[1].read_bytes()[:5] == b"%PDF-" and written[1].stat().st_size > 10_000
    again, replaced = save_report(page, tmp_path, "mole-report")
    assert replaced == again  # said, not silent
    assert report_name(None, 2) == "image-3-report"


# --------------------------------------------------------------------------------------- the CLI, bundled
@pytest.fixture(scope="module")
def photos(ham10000_dir, tmp_path_factory) -> Path:
    """A lesion and the same lesion in grey (which the bundled gate calls "not a lesion photo")."""
    if not (bundled_package_dir() / "manifest.json").is_file():
        pytest.skip("no bundled model package")
    folder = tmp_path_factory.mktemp("photos")
    lesion = sorted((ham10000_dir / "images").glob("*.jpg"))[0]
    Image.open(lesion).save(folder / "lesion.jpg", quality=95)
    Image.open(lesion).convert("L").save(folder / "grey.png")
    if Classifier.load(threads=1).classify(folder / "grey.png").assessable:
        pytest.skip("the bundled package assesses a grey photo")
    return folder


def test_the_cli_shows_no_diagnosis_for_an_image_that_cannot_be_assessed(photos, capsys):
    assert main(["predict", str(photos / "grey.png"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(str(photos / "grey.png")))
    assert "CANNOT ASSESS (not a lesion)" in row and "%" not in row and "(fp32)" in out
    assert "codes:" not in out  # no diagnosis code was shown, so none is explained

    assert main(["predict", str(photos), "--json", "--threads", "1"]) == 0
    document = json.loads(capsys.readouterr().out)
    by_name = {Path(p["source"]).name: p for p in document["predictions"]}
    grey, lesion = by_name["grey.png"], by_name["lesion.jpg"]
    assert grey["cannot_assess"] == "not_a_lesion" and grey["top"] == []
    assert all(grey[key] is None for key in ("label", "name", "probability", "probabilities", "malignant",
                                             "malignant_probability"))
    developer = grey["developer"]
    assert developer["note"] == NOT_SHOWN_NOTE and "not shown to users" in developer["note"]
    assert sum(developer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) and len(developer["top"]) == 3
    assert lesion["cannot_assess"] is None and "developer" not in lesion and len(lesion["top"]) == 3
    assert document["model"]["precision"] == "fp32"  # the default: what the web app runs

    assert main(["predict", str(photos), "--csv", "--threads", "1"]) == 0
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["grey.png"]["cannot_assess"] == "not_a_lesion"
    assert set(rows["grey.png"].values()) - {rows["grey.png"]["file"]} == {"", "not_a_lesion"}
    assert rows["lesion.jpg"]["label"] and rows["lesion.jpg"]["cannot_assess"] == ""


def test_predict_report_writes_one_page_per_image(photos, tmp_path, capsys):
    out_dir = tmp_path / "reports" / "new"  # created
    assert main(["predict", str(photos), "--report", str(out_dir), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"2 report(s) for the doctor (one page each, PNG and PDF) written to {out_dir}" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["grey-report.pdf", "grey-report.png", "lesion-report.pdf",
                                                         "lesion-report.png"]
    with Image.open(out_dir / "grey-report.png") as png:
        words = png.text["Description"]
        assert png.size == PAGE and CANNOT_ASSESS in words and "%" not in words and DISCLAIMER in words
    with Image.open(out_dir / "lesion-report.png") as png:
        words = png.text["Description"]
        assert "likeliest diagnoses" in words and "Where the model looked" in words and "skinscan 0.1.0" in words
    assert main(["predict", str(photos / "lesion.jpg"), "--report", str(out_dir), "--threads", "1"]) == 0
    assert "lesion-report.png  (replaced the file that was there)" in capsys.readouterr().out


def test_predict_explain_draws_no_map_for_an_image_that_cannot_be_assessed(photos, tmp_path, capsys):
    assert main(["predict", str(photos), "--explain", str(tmp_path / "maps"), "--threads", "1"]) == 0
    assert "1 explanation overlay(s)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["lesion.png"]


def test_predict_report_refuses_a_bad_folder(photos, tmp_path, capsys):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    assert main(["predict", str(photos), "--report", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert main(["predict", str(photos), "--report", str(a_file / "inside")]) == 2
    assert "cannot create that folder" in capsys.readouterr().err
