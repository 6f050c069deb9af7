"""Data beyond HAM10000: label sets as data, any image folder + CSV, and an ISIC-2019-shaped data set taken
through validate -> split -> train -> evaluate -> export -> the torch-free runtime with 8 labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinscan.cli import main
from skinscan.factory.data import (
    DatasetError,
    DataSource,
    lesion_grouped_split,
    read_metadata,
    read_split,
    require_known_labels,
    validate_dataset,
)
from skinscan.labels import HAM10000, LabelSet, LabelSetError, load_label_set

ISIC_LABELS = [*HAM10000.to_json(), {"code": "scc", "name": "Squamous cell carcinoma", "malignant": True}]
ISIC_LABELS.sort(key=lambda d: d["code"])
PER_CLASS = 6


# --------------------------------------------------------------------------------------- label sets
def test_ham10000_is_the_default_label_set():
    assert load_label_set() == load_label_set("ham10000") == HAM10000
    assert HAM10000.codes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert HAM10000.malignant_codes == ("akiec", "bcc", "mel")
    assert LabelSet.from_json(HAM10000.to_json()) == HAM10000


def test_builtin_isic2019_label_set():
    labels = load_label_set("isic2019")
    assert labels.codes == ("ak", "bcc", "bkl", "df", "mel", "nv", "scc", "vasc")
    assert set(labels.malignant_codes) == {"ak", "bcc", "mel", "scc"}


def test_label_set_from_a_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(ISIC_LABELS))
    labels = load_label_set(path)
    assert len(labels) == 8 and labels.index("scc") == 6 and labels.names["scc"] == "Squamous cell carcinoma"
    with pytest.raises(ValueError, match=r"'lupus'.*--labels FILE"):
        labels.index("lupus")


@pytest.mark.parametrize("content, message", [
    ("[]", "non-empty JSON list"),
    ("", "not valid JSON"),
    ('{"code": "mel"}', "non-empty JSON list"),
    ('[{"code": "mel", "malignant": true}]', "at least 2"),
    ('[{"code": "mel", "malignant": true}, {"code": "mel", "malignant": true}]', "'?mel'? more than once"),
    ('[{"code": "mel", "malignant": true}, {"name": "Nevus", "malignant": false}]', 'entry 1 needs .*"code"'),
    ('[{"code": "mel", "malignant": "yes"}, {"code": "nv", "malignant": false}]', "'mel'.*true or false"),
])
def test_bad_label_set_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message) as error:
        load_label_set(path)
    assert str(path) in str(error.value)


def test_missing_label_set_file_names_the_builtin_sets(tmp_path):
    with pytest.raises(LabelSetError, match="ham10000, isic2019"):
        load_label_set(tmp_path / "nope.json")


def test_cli_reports_a_bad_label_set_as_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    assert main(["data", "validate", "--data", str(tmp_path), "--labels", str(tmp_path / "empty.json")]) == 2
    assert "empty.json must be a non-empty JSON list" in capsys.readouterr().err


# --------------------------------------------------------------------------------- any image folder + CSV
def write_images(folder: Path, names, size=(40, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=90)


def test_metadata_columns_are_renamed_to_ours(tmp_path):
    csv = tmp_path / "truth.csv"
    pd.DataFrame({"image": ["a", "b", "c"], "patient": ["p1", "p1", "p2"], "lesion_id": ["x", "y", "z"],
                  "diagnosis": ["mel", "mel", "nv"], "age": [40, 41, 50]}).to_csv(csv, index=False)
    source = DataSource(tmp_path / "images", csv, id_column="image", group_column="patient", label_column="diagnosis")
    metadata = read_metadata(source)
    # the CSV's own lesion_id column is shadowed by the chosen group column, the other columns stay
    assert list(metadata.columns) == ["lesion_id", "image_id", "dx", "age"]
    assert metadata.lesion_id.tolist() == ["p1", "p1", "p2"] and metadata.image_id.tolist() == ["a", "b", "c"]
    # one column may serve two roles: every image its own group
    alone = read_metadata(DataSource(tmp_path, csv, id_column="image", group_column="image", label_column="diagnosis"))
    assert alone.lesion_id.tolist() == alone.image_id.tolist() == ["a", "b", "c"]


def test_missing_column_names_it_and_the_option(tmp_path):
    csv = tmp_path / "truth.csv"
    pd.DataFrame({"image": ["a"], "lesion_id": ["l"], "diagnosis": ["mel"]}).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"'dx' \(the diagnosis, --label-column\).*image, lesion_id, diagnosis"):
        read_metadata(DataSource(tmp_path, csv, id_column="image"))


def test_validation_reports_in_the_csvs_column_names(tmp_path):
    write_images(tmp_path / "input", ["a", "b", "c", "d"])
    csv = tmp_path / "truth.csv"
    pd.DataFrame({"image": ["a", "b", "c", "d"], "lesion": ["l1", "l1", "l2", ""],
                  "diagnosis": ["mel", "nv", "scc", "nv"]}).to_csv(csv, index=False)
    source = DataSource(tmp_path / "input", csv, id_column="image", group_column="lesion", label_column="diagnosis")
    report = validate_dataset(source)
    assert report.unknown_codes == {"scc": 1} and report.empty_fields == {"lesion": 1}
    assert report.conflicting_lesions == ["l1"]
    text = report.format()
    assert "lesion(s) with more than one diagnosis" in text and "fix the diagnosis column" in text
    assert "--labels FILE" in text
    assert validate_dataset(source, labels=LabelSet.from_json(ISIC_LABELS)).unknown_codes == {}


def test_split_refuses_labels_outside_the_label_set():
    codes = pd.Series(["mel", "scc", "scc", None])
    with pytest.raises(DatasetError, match=r"truth.csv has diagnoses outside .*'scc' x2.*--labels"):
        require_known_labels(codes, HAM10000, "truth.csv")
    require_known_labels(codes, LabelSet.from_json(ISIC_LABELS), "truth.csv")


# ------------------------------------------------------------------------- an ISIC-2019-shaped data set
@pytest.fixture(scope="module")
def isic_like(ham10000_dir, tmp_path_factory) -> dict:
    """HAM10000 images renamed and shrunk into a flat folder, an `image,lesion_id,diagnosis` CSV with an 8th
    diagnosis (scc: some akiec images relabelled, for the test only) and the 8-label set file."""
    root = tmp_path_factory.mktemp("isic")
    ham = pd.read_csv(ham10000_dir / "HAM10000_metadata.csv")
    single = ham[~ham.lesion_id.duplicated(keep=False)].sort_values("image_id")  # one image per lesion
    rows = []
    for dx in sorted(ham.dx.unique()):
        take = PER_CLASS * 2 if dx == "akiec" else PER_CLASS
        chosen = single[single.dx == dx].head(take)
        for i, (_, row) in enumerate(chosen.iterrows()):
            rows.append((row.image_id, row.lesion_id, "scc" if dx == "akiec" and i >= PER_CLASS else dx))
    images = root / "ISIC_2019_Training_Input"
    images.mkdir()
    table = []
    for n, (image_id, lesion_id, diagnosis) in enumerate(rows):
        name = f"ISIC_{9000000 + n:07d}"
        with Image.open(ham10000_dir / "images" / f"{image_id}.jpg") as image:
            image.resize((100, 75)).save(images / f"{name}.jpg", quality=90)
        table.append({"image": name, "lesion_id": f"LES_{lesion_id}", "diagnosis": diagnosis, "age_approx": 50})
    csv = root / "isic_2019_truth.csv"
    pd.DataFrame(table).to_csv(csv, index=False)
    labels = root / "labels.json"
    labels.write_text(json.dumps(ISIC_LABELS, indent=1))
    data = ["--images", str(images), "--metadata", str(csv), "--id-column", "image", "--label-column", "diagnosis"]
    return {"root": root, "images": images, "csv": csv, "labels": labels, "data": data}


def test_validate_and_split_an_isic_shaped_data_set(isic_like, capsys):
    data, labels = isic_like["data"], ["--labels", str(isic_like["labels"])]
    assert main(["data", "validate", *data]) == 1  # HAM10000's labels: scc is unknown
    assert "'scc' x6" in capsys.readouterr().out
    assert main(["data", "validate", *data, *labels]) == 0
    assert "OK" in capsys.readouterr().out

    split_csv = isic_like["root"] / "split.csv"
    assert main(["data", "split", *data, "--out", str(split_csv)]) == 2  # refuses labels it would not know
    assert "scc" in capsys.readouterr().err
    assert main(["data", "split", *data, *labels, "--out", str(split_csv), "--seed", "1"]) == 0
    split = read_split(split_csv)
    assert len(split) == 8 * PER_CLASS and split.image_id.str.startswith("ISIC_").all()
    assert split.groupby("lesion_id").split.nunique().max() == 1  # group-disjoint
    for _, part_counts in split.groupby("dx").split.value_counts().unstack(fill_value=0).iterrows():
        assert part_counts["train"] >= 3 and part_counts["val"] >= 1 and part_counts["test"] >= 1  # stratified
    source = DataSource(isic_like["images"], isic_like["csv"], id_column="image", label_column="diagnosis")
    pd.testing.assert_frame_equal(split, lesion_grouped_split(read_metadata(source), seed=1))


@pytest.mark.slow
def test_isic_shaped_data_set_trains_exports_and_runs_with_its_8_labels(isic_like, tmp_path):
    pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
    from skinscan.factory.train import checkpoint_labels, load_checkpoint
    from skinscan.runtime.classifier import Classifier

    data, labels = isic_like["data"], ["--labels", str(isic_like["labels"])]
    split_csv = tmp_path / "split.csv"
    assert main(["data", "split", *data, *labels, "--out", str(split_csv)]) == 0
    images = ["--images", str(isic_like["images"])]
    assert main(["train", *images, "--split", str(split_csv), *labels, "--out", str(tmp_path / "run"),
                 "--pretrained", "none", "--input-size", "64", "64", "--warmup-epochs", "1", "--epochs", "1",
                 "--batch-size", "16", "--threads", "2", "--seed", "0"]) == 0
    best = tmp_path / "run" / "best.pt"
    checkpoint = load_checkpoint(best)
    expected = tuple(d["code"] for d in ISIC_LABELS)
    assert checkpoint_labels(checkpoint).codes == expected and checkpoint["model_config"]["num_classes"] == 8

    assert main(["evaluate", "--checkpoint", str(best), *data, "--split", str(split_csv), "--part", "test",
                 "--out", str(tmp_path / "eval"), "--threads", "2"]) == 0
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(predictions.columns[2:]) == list(expected) and "scc" in set(predictions.true)
    assert "Squamous cell carcinoma" in (tmp_path / "eval" / "report.md").read_text()

    package = tmp_path / "package"
    assert main(["export", "--checkpoint", str(best), *images, "--split", str(split_csv), "--out", str(package),
                 "--threads", "2"]) == 0
    import onnx

    from skinscan.factory.onnx_metadata import read_metadata as onnx_metadata

    metadata = onnx_metadata(onnx.load(str(package / "skinscan.onnx")))
    assert metadata["skinscan.labels"] == list(expected)
    assert "P(scc)" in metadata["skinscan.thresholds"]["malignant_rule"]
    assert "split.csv" in metadata["skinscan.training_data"]
    classifier = Classifier.load(package, precision="fp32")
    assert classifier.labels == expected
    assert classifier.label_names["scc"] == "Squamous cell carcinoma"
    assert set(classifier.malignant_codes) == {"akiec", "bcc", "mel", "scc"}
    prediction = classifier.classify(next(isic_like["images"].glob("*.jpg")))
    assert list(prediction.probabilities) == list(expected)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
