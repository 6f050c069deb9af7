"""Tests of skinscan.factory.data: the lesion-grouped split on the real metadata, and validation of synthetic
folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import skinscan.factory.data
from skinscan.cli import main
from skinscan.factory.data import (
    IMAGE_DIR,
    METADATA_FILE,
    SPLITS,
    DatasetError,
    cross_validation_folds,
    default_data_dir,
    lesion_grouped_split,
    read_metadata,
    read_split,
    validate_dataset,
    write_split,
)
from skinscan.labels import LABEL_CODES

FRACTIONS = (0.70, 0.15, 0.15)


# --------------------------------------------------------------------------- where the data is
def test_default_data_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SKINSCAN_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_default_data_dir_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    repository = Path(skinscan.factory.data.__file__).resolve().parents[3]
    expected = (repository / "../shared/data/ham10000").resolve()
    if not (expected / METADATA_FILE).is_file():
        pytest.skip(f"no {METADATA_FILE} in {expected}")
    monkeypatch.delenv("SKINSCAN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir().resolve() == expected


# --------------------------------------------------------------------------- split on the real metadata
@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    data_dir = default_data_dir()
    if not (data_dir / METADATA_FILE).is_file():
        pytest.skip(f"no {METADATA_FILE} in {data_dir}; set $SKINSCAN_DATA to a HAM10000 folder to run these tests")
    return read_metadata(data_dir)


@pytest.fixture(scope="module")
def split(metadata) -> pd.DataFrame:
    return lesion_grouped_split(metadata, FRACTIONS, seed=0)


def test_split_is_lesion_disjoint(split):
    parts_per_lesion = split.groupby("lesion_id").split.nunique()
    assert parts_per_lesion.max() == 1, list(parts_per_lesion.index[parts_per_lesion > 1])[:5]
    # and not trivially so: every part holds lesions, and multi-image lesions exist in the data
    assert set(split.split) == set(SPLITS)
    assert split.groupby("lesion_id").size().max() > 1
    lesions = {part: set(split.lesion_id[split.split == part]) for part in SPLITS}
    assert not lesions["train"] & lesions["val"]
    assert not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]


def test_split_assigns_every_image_exactly_once(metadata, split):
    assert len(split) == len(metadata)
    assert split.image_id.is_unique
    # one row per image, in the metadata's order, with the metadata's lesion and diagnosis
    assert split.image_id.tolist() == metadata.image_id.tolist()
    assert split.lesion_id.tolist() == metadata.lesion_id.tolist()
    assert split.dx.tolist() == metadata.dx.tolist()
    assert split.split.notna().all()
    assert set(split.split) <= set(SPLITS)
    assert list(split.columns) == ["image_id", "lesion_id", "dx", "split"]


def test_split_is_deterministic_per_seed(metadata, split):
    again = lesion_grouped_split(metadata, FRACTIONS, seed=0)
    pd.testing.assert_frame_equal(split, again)
    other = lesion_grouped_split(metadata, FRACTIONS, seed=1)
    moved = (other.split != split.split).mean()
    assert moved > 0.05, f"seed 1 moved only {moved:.1%} of the images"


@pytest.mark.parametrize(("fractions", "seed"), [(FRACTIONS, 0), (FRACTIONS, 1), (FRACTIONS, 7), ((0.8, 0.1, 0.1), 3)])
def test_split_is_stratified_by_diagnosis(metadata, fractions, seed):
    split = lesion_grouped_split(metadata, fractions, seed=seed)
    # What is achievable: a lesion is indivisible and the split fills val and test first, giving a part a
    # lesion of c images only while that keeps it within c/2 of its target, and passing a lesion on only
    # when the part is already within c/2 of its target. So val and test land within c_max/2 images of
    # their targets and train (the rest) within c_max, i.e. within c_max / n of the target fraction.
    # HAM10000 here: c_max is 4-6 images for the classes with >= 200 images (akiec 283, bcc 431, bkl 938,
    # mel 942, nv 5706: bound <= 4/283 = 0.014, hence 0.02), and 3 for df (92 images: 3/92 = 0.033)
    # and vasc (120 images: 3/120 = 0.025), hence 0.035 for those.
    counts = split.groupby(["dx", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS), fill_value=0)
    assert set(counts.index) == set(LABEL_CODES)
    for dx, row in counts.iterrows():
        total = row.sum()
        tolerance = 0.02 if total >= 200 else 0.035
        for part, target in zip(SPLITS, fractions, strict=True):
            fraction = row[part] / total
            assert abs(fraction - target) <= tolerance, (
                f"{dx}: {part} has {row[part]}/{total} = {fraction:.3f} of the images, target {target}"
            )


def test_split_refuses_conflicting_lesions_and_bad_fractions():
    metadata = pd.DataFrame({"lesion_id": ["L1", "L1", "L2"], "image_id": ["a", "b", "c"], "dx": ["mel", "nv", "nv"]})
    with pytest.raises(DatasetError, match="L1"):
        lesion_grouped_split(metadata)
    ok = metadata.assign(dx="nv")
    for fractions in [(0.5, 0.5), (0.7, 0.2, 0.2), (1.1, 0.0, -0.1)]:
        with pytest.raises(ValueError, match="fractions"):
            lesion_grouped_split(ok, fractions)


@pytest.mark.parametrize("column", ["lesion_id", "dx"])
def test_split_refuses_empty_required_fields(column):
    metadata = pd.DataFrame({"lesion_id": ["L1", "L2", "L3"], "image_id": ["a", "b", "c"], "dx": ["nv", "mel", "nv"]})
    metadata.loc[1, column] = None
    with pytest.raises(DatasetError, match=column):
        lesion_grouped_split(metadata)


def test_cross_validation_folds_rotate_val_over_the_train_val_lesions_and_keep_test(split):
    folds = cross_validation_folds(split, folds=5, seed=0)
    assert len(folds) == 5
    pool = split[split.split != "test"]
    val_count = pd.Series(0, index=pool.image_id.to_numpy())
    for fold in folds:
        assert list(fold.image_id) == list(split.image_id)
        pd.testing.assert_frame_equal(fold[fold.split == "test"], split[split.split == "test"])  # test untouched
        assert fold.groupby("lesion_id").split.nunique().max() == 1  # no lesion in two parts
        val = fold[fold.split == "val"]
        val_count[val.image_id.to_numpy()] += 1
        for dx, n in pool.dx.value_counts().items():  # each fold's val holds about a fifth of every class
            largest_lesion = pool[pool.dx == dx].groupby("lesion_id").size().max()
            assert abs((val.dx == dx).sum() - n / 5) <= largest_lesion, dx
    assert (val_count == 1).all()  # every train/val image is val in exactly one fold
    again = cross_validation_folds(split, folds=5, seed=0)
    assert all(a.equals(b) for a, b in zip(folds, again, strict=True))
    other = cross_validation_folds(split, folds=5, seed=1)
    assert not folds[0].equals(other[0])


def test_cross_validation_folds_refuse_too_few_folds_or_lesions(split):
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validation_folds(split, folds=1)
    with pytest.raises(DatasetError, match="too few for 100 folds"):
        cross_validation_folds(split, folds=100)


def test_write_and_read_split_round_trip(split, tmp_path):
    path = write_split(split, tmp_path / "nested" / "split.csv")
    assert path == tmp_path / "nested" / "split.csv"
    assert not list(path.parent.glob("*.tmp"))
    pd.testing.assert_frame_equal(read_split(path), split)


def test_read_split_refuses_a_leaking_lesion(split, tmp_path):
    # move one image of a multi-image lesion to another part
    sizes = split.groupby("lesion_id").size()
    lesion = sizes.index[sizes > 1][0]
    leaking = split.copy()
    row = leaking.index[leaking.lesion_id == lesion][0]
    leaking.loc[row, "split"] = "test" if leaking.loc[row, "split"] != "test" else "train"
    path = tmp_path / "leaking.csv"
    leaking.to_csv(path, index=False)
    with pytest.raises(DatasetError, match="more than one part") as error:
        read_split(path)
    assert lesion in str(error.value)
    assert "skinscan data split" in str(error.value)


def test_read_split_refuses_a_missing_column(split, tmp_path):
    path = tmp_path / "no_dx.csv"
    split.drop(columns="dx").to_csv(path, index=False)
    with pytest.raises(DatasetError, match="dx") as error:
        read_split(path)
    assert str(path) in str(error.value)
    assert "skinscan data split" in str(error.value)


def test_read_split_refuses_missing_file_and_unknown_part(tmp_path):
    with pytest.raises(DatasetError, match="no split file"):
        read_split(tmp_path / "absent.csv")
    path = tmp_path / "unknown.csv"
    pd.DataFrame({"image_id": ["a"], "lesion_id": ["L"], "dx": ["nv"], "split": ["holdout"]}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="holdout"):
        read_split(path)


# --------------------------------------------------------------------------- validation of synthetic folders
CLEAN_ROWS = [  # lesion_id, image_id, dx
    ("HAM_1", "ISIC_01", "nv"),
    ("HAM_1", "ISIC_02", "nv"),
    ("HAM_2", "ISIC_03", "mel"),
    ("HAM_3", "ISIC_04", "bkl"),
    ("HAM_4", "ISIC_05", "bcc"),
    ("HAM_4", "ISIC_06", "bcc"),
    ("HAM_5", "ISIC_07", "akiec"),
    ("HAM_6", "ISIC_08", "df"),
    ("HAM_7", "ISIC_09", "vasc"),
    ("HAM_8", "ISIC_10", "nv"),
]


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_dataset(root: Path, rows=CLEAN_ROWS, images=None) -> Path:
    """A HAM10000-style folder: metadata for `rows` and a small JPEG for each of `images` (default: the rows')."""
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx"])
    frame["dx_type"] = "histo"
    frame["age"] = 50.0
    frame.to_csv(root / METADATA_FILE, index=False)
    (root / IMAGE_DIR).mkdir(exist_ok=True)
    image_ids = [image_id for _, image_id, _ in rows] if images is None else images
    for seed, image_id in enumerate(dict.fromkeys(image_ids)):
        if image_id:
            (root / IMAGE_DIR / f"{image_id}.jpg").write_bytes(jpeg_bytes(seed))
    return root


def replace_row(rows, key, **changes):
    """`rows` with the row of image `key` changed, e.g. `dx="mel"`."""
    columns = ("lesion_id", "image_id", "dx")
    out = []
    for row in rows:
        if row[1] == key:
            row = tuple(changes.get(column, value) for column, value in zip(columns, row, strict=True))
        out.append(row)
    return out


def test_clean_folder_is_ok(tmp_path):
    report = validate_dataset(make_dataset(tmp_path / "clean"))
    assert report.ok, report.format()
    assert report.n_rows == len(CLEAN_ROWS)
    text = report.format()
    assert text.rstrip().endswith("OK")
    assert "problems" not in text


def test_missing_image(tmp_path):
    folder = make_dataset(tmp_path / "d")
    (folder / IMAGE_DIR / "ISIC_03.jpg").unlink()
    report = validate_dataset(folder)
    assert not report.ok
    assert report.missing_images == ["ISIC_03"]
    assert "ISIC_03" in report.format()
    assert not report.extra_images and not report.unreadable_images


def test_extra_image(tmp_path):
    folder = make_dataset(tmp_path / "d")
    (folder / IMAGE_DIR / "ISIC_99.jpg").write_bytes(jpeg_bytes(99))
    report = validate_dataset(folder)
    assert not report.ok
    assert report.extra_images == ["ISIC_99"]
    assert "ISIC_99" in report.format()
    assert not report.missing_images


def test_duplicate_image_id(tmp_path):
    folder = make_dataset(tmp_path / "d", rows=[*CLEAN_ROWS, ("HAM_2", "ISIC_03", "mel")])
    report = validate_dataset(folder)
    assert not report.ok
    assert report.duplicate_ids == ["ISIC_03"]
    assert "ISIC_03" in report.format()
    assert "more than once" in report.format()


def test_unknown_dx_code(tmp_path):
    folder = make_dataset(tmp_path / "d", rows=replace_row(CLEAN_ROWS, "ISIC_03", dx="melanoma"))
    report = validate_dataset(folder)
    assert not report.ok
    assert report.unknown_codes == {"melanoma": 1}
    text = report.format()
    assert "'melanoma'" in text
    assert "mel" in text.split("use one of")[1]  # says which codes are valid


def test_lesion_with_two_diagnoses(tmp_path):
    folder = make_dataset(tmp_path / "d", rows=replace_row(CLEAN_ROWS, "ISIC_02", dx="mel"))
    report = validate_dataset(folder)
    assert not report.ok
    assert report.conflicting_lesions == ["HAM_1"]
    assert not report.unknown_codes
    assert "HAM_1" in report.format()


@pytest.mark.parametrize("column", ["lesion_id", "dx"])
def test_empty_required_field(tmp_path, column):
    folder = make_dataset(tmp_path / "d", rows=replace_row(CLEAN_ROWS, "ISIC_05", **{column: ""}))
    report = validate_dataset(folder)
    assert not report.ok
    assert report.empty_fields == {column: 1}
    assert f"{column} x1" in report.format()


@pytest.mark.parametrize("column", ["lesion_id", "dx"])
def test_empty_field_does_not_make_the_image_extra(tmp_path, column):
    folder = make_dataset(tmp_path / "d", rows=replace_row(CLEAN_ROWS, "ISIC_05", **{column: ""}))
    report = validate_dataset(folder)
    assert report.empty_fields == {column: 1}
    assert report.extra_images == []


def test_empty_image_id(tmp_path):
    # the row cannot be matched to its file, which therefore also shows up as not in the metadata
    folder = make_dataset(tmp_path / "d", rows=replace_row(CLEAN_ROWS, "ISIC_05", image_id=""),
                          images=[image_id for _, image_id, _ in CLEAN_ROWS])
    report = validate_dataset(folder)
    assert not report.ok
    assert report.empty_fields == {"image_id": 1}
    assert report.extra_images == ["ISIC_05"]


def test_truncated_jpeg(tmp_path):
    folder = make_dataset(tmp_path / "d")
    path = folder / IMAGE_DIR / "ISIC_04.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = validate_dataset(folder)
    assert not report.ok
    assert list(report.unreadable_images) == ["ISIC_04"]
    assert "truncated" in report.unreadable_images["ISIC_04"]
    assert "ISIC_04" in report.format()
    # with check_images=False the (slow) decoding is skipped and the folder passes
    assert validate_dataset(folder, check_images=False).ok


def test_text_file_named_jpg(tmp_path):
    folder = make_dataset(tmp_path / "d")
    (folder / IMAGE_DIR / "ISIC_07.jpg").write_text("this is not a JPEG\n")
    report = validate_dataset(folder)
    assert not report.ok
    assert list(report.unreadable_images) == ["ISIC_07"]
    assert "ISIC_07" in report.format()


def broken_folder(root: Path) -> Path:
    """Every kind of problem at once."""
    rows = replace_row(CLEAN_ROWS, "ISIC_02", dx="mel")  # HAM_1 has two diagnoses
    rows = replace_row(rows, "ISIC_03", dx="melanoma")  # unknown code
    rows = replace_row(rows, "ISIC_06", lesion_id="")  # empty field
    rows = [*rows, ("HAM_8", "ISIC_10", "nv")]  # duplicate image_id
    folder = make_dataset(root, rows=rows)
    (folder / IMAGE_DIR / "ISIC_08.jpg").unlink()  # missing image
    (folder / IMAGE_DIR / "ISIC_99.jpg").write_bytes(jpeg_bytes(99))  # extra image
    truncated = folder / IMAGE_DIR / "ISIC_04.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (folder / IMAGE_DIR / "ISIC_07.jpg").write_text("not an image")
    return folder


def test_all_problems_in_one_report(tmp_path):
    report = validate_dataset(broken_folder(tmp_path / "d"))
    assert not report.ok
    assert report.missing_images == ["ISIC_08"]
    assert "ISIC_99" in report.extra_images  # (ISIC_06, whose row lacks its lesion_id, too: see below)
    assert report.duplicate_ids == ["ISIC_10"]
    assert report.unknown_codes == {"melanoma": 1}
    assert report.conflicting_lesions == ["HAM_1"]
    assert report.empty_fields == {"lesion_id": 1}
    assert sorted(report.unreadable_images) == ["ISIC_04", "ISIC_07"]
    text = report.format()
    for needle in ["ISIC_08", "ISIC_99", "ISIC_10", "'melanoma'", "HAM_1", "lesion_id x1", "ISIC_04", "ISIC_07"]:
        assert needle in text, needle
    assert "problems" in text


def test_report_format_limits_examples(tmp_path):
    folder = make_dataset(tmp_path / "d")
    for name in ["ISIC_01", "ISIC_02", "ISIC_03", "ISIC_04"]:
        (folder / IMAGE_DIR / f"{name}.jpg").unlink()
    text = validate_dataset(folder).format(limit=2)
    assert "4 listed in the metadata but without an image file" in text
    assert "ISIC_01, ISIC_02, ... (2 more)" in text
    assert "ISIC_03" not in text


def test_missing_metadata_file(tmp_path):
    folder = make_dataset(tmp_path / "d")
    (folder / METADATA_FILE).unlink()
    with pytest.raises(DatasetError, match=METADATA_FILE) as error:
        validate_dataset(folder)
    assert str(folder) in str(error.value)


def test_missing_dx_column(tmp_path):
    folder = make_dataset(tmp_path / "d")
    frame = pd.read_csv(folder / METADATA_FILE).drop(columns="dx")
    frame.to_csv(folder / METADATA_FILE, index=False)
    with pytest.raises(DatasetError, match=r"\bdx\b") as error:
        validate_dataset(folder)
    assert METADATA_FILE in str(error.value)


def test_unreadable_metadata_file(tmp_path):
    folder = make_dataset(tmp_path / "d")
    (folder / METADATA_FILE).write_bytes(b"")
    with pytest.raises(DatasetError, match="not a readable CSV"):
        validate_dataset(folder)


# --------------------------------------------------------------------------- the CLI verbs
def test_cli_validate_reports_problems(tmp_path, capsys):
    folder = broken_folder(tmp_path / "d")
    assert main(["data", "validate", "--data", str(folder)]) == 1
    out = capsys.readouterr().out
    for needle in ["ISIC_08", "ISIC_99", "ISIC_10", "'melanoma'", "HAM_1", "ISIC_04", "ISIC_07"]:
        assert needle in out, needle


def test_cli_validate_clean_folder(tmp_path, capsys):
    folder = make_dataset(tmp_path / "d")
    assert main(["data", "validate", "--data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{len(CLEAN_ROWS)} metadata rows" in out
    assert "OK" in out


def test_cli_validate_missing_metadata_is_a_usage_error(tmp_path, capsys):
    assert main(["data", "validate", "--data", str(tmp_path)]) == 2
    assert METADATA_FILE in capsys.readouterr().err


def test_cli_split_writes_the_csv(tmp_path, capsys):
    folder = make_dataset(tmp_path / "d")
    out = tmp_path / "runs" / "split.csv"
    assert main(["data", "split", "--data", str(folder), "--out", str(out), "--seed", "3"]) == 0
    assert out.is_file()
    split = read_split(out)
    assert sorted(split.image_id) == sorted(image_id for _, image_id, _ in CLEAN_ROWS)
    pd.testing.assert_frame_equal(split, lesion_grouped_split(read_metadata(folder), FRACTIONS, seed=3))
    assert str(out) in capsys.readouterr().out
def test_cli_folds_writes_one_split_file_per_fold(split, tmp_path, capsys):
    split_csv = write_split(split, tmp_path / "runs" / "split.csv")
    out = tmp_path / "runs" / "folds"
    assert main(["data", "folds", "--split", str(split_csv), "--folds", "3", "--out", str(out)]) == 0
    written = [read_split(out / f"fold-{k}.csv") for k in range(3)]
    for fold, expected in zip(written, cross_validation_folds(split, folds=3), strict=True):
        assert list(fold.split) == list(expected.split)
    assert "test part unchanged" in capsys.readouterr().out
    assert main(["data", "folds", "--split", str(split_csv), "--folds", "1", "--out", str(out)]) == 2
    assert "at least 2 folds" in capsys.readouterr().err


