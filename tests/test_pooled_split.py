"""scripts/pooled_split.py: HAM10000's split kept as is, the extra images' non-external lesions split whole into
train/val, the 256-px external collection in no training part, and a folder of links that resolves every id."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from skinscan.factory.data import read_split

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pooled_split.py"
spec = importlib.util.spec_from_file_location("pooled_split", SCRIPT)
pooled_split = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pooled_split)


def ham_split() -> pd.DataFrame:
    rows = [(f"ISIC_H{i}", f"HAM_{i // 2}", "nv" if i % 3 else "mel", ["train", "val", "test"][(i // 2) % 3])
            for i in range(30)]
    return pd.DataFrame(rows, columns=["image_id", "lesion_id", "dx", "split"])


def extra_metadata() -> pd.DataFrame:
    rows = []
    for lesion in range(40):  # BCN-like: 84 px, 1-3 images per lesion
        for view in range(1 + lesion % 3):
            rows.append((f"BCN_{lesion}", f"ISIC_B{lesion}_{view}", ["mel", "bcc", "nv"][lesion % 3], "bcn20000", 84))
    for i in range(12):  # ISIC 2017-era: 256 px, the external collection
        rows.append((f"ISIC_E{i}", f"ISIC_E{i}", ["nv", "mel", "bkl"][i % 3], ["msk", "isic_archive"][i % 2], 256))
    frame = pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx", "collection", "width"])
    return frame.assign(height=frame.width)


def test_ham_is_kept_external_is_held_out_and_lesions_stay_whole():
    split, external = pooled_split.pooled_split(ham_split(), extra_metadata(), val_fraction=0.25, seed=0)
    ham = split[split.source == "ham10000"]
    assert ham[["image_id", "lesion_id", "dx", "split"]].reset_index(drop=True).equals(ham_split())
    assert set(ham.collection) == {"ham10000"}
    extra = split[split.source == "isic2019_extra"]
    assert set(extra.split) == {"train", "val"} and set(extra.collection) == {"bcn20000"}
    assert extra.groupby("lesion_id").split.nunique().max() == 1
    assert extra[extra.split == "val"].lesion_id.nunique() == 10  # 25% of the 40 lesions
    assert len(external) == 12 and set(external.split) == {"test"}
    assert set(external.collection) == {"msk", "isic_archive"} and set(external.source) == {"isic2019_extra"}
    assert not set(external.image_id) & set(split.image_id)
    assert list(split.columns) == ["image_id", "lesion_id", "dx", "split", "source", "collection"]


def test_a_lesion_with_any_external_image_is_held_out_whole():
    metadata = extra_metadata()
    metadata.loc[metadata.image_id == "ISIC_B1_1", "width"] = 256  # lesion BCN_1 now straddles the line
    split, external = pooled_split.pooled_split(ham_split(), metadata, seed=0)
    assert set(external[external.lesion_id == "BCN_1"].image_id) == {"ISIC_B1_0", "ISIC_B1_1"}
    assert "BCN_1" not in set(split.lesion_id)


def test_the_same_seed_gives_the_same_split():
    first = pooled_split.pooled_split(ham_split(), extra_metadata(), seed=4)[0]
    assert first.equals(pooled_split.pooled_split(ham_split(), extra_metadata(), seed=4)[0])
    assert not first.equals(pooled_split.pooled_split(ham_split(), extra_metadata(), seed=5)[0])


def test_colliding_ids_are_refused():
    metadata = extra_metadata()
    metadata.loc[0, "image_id"] = "ISIC_H3"
    with pytest.raises(ValueError, match="in both sources"):
        pooled_split.pooled_split(ham_split(), metadata)
    metadata = extra_metadata()
    metadata.loc[0, "lesion_id"] = "HAM_1"
    with pytest.raises(ValueError, match="lesion ids .* in both sources"):
        pooled_split.pooled_split(ham_split(), metadata)


def test_main_writes_readable_splits_and_links(tmp_path, capsys):
    ham_images, extra = tmp_path / "ham" / "images", tmp_path / "extra"
    ham_images.mkdir(parents=True)
    (extra / "images").mkdir(parents=True)
    for image_id in ham_split().image_id:
        (ham_images / f"{image_id}.jpg").write_bytes(b"h")
    metadata = extra_metadata()
    for image_id in metadata.image_id:
        (extra / "images" / f"{image_id}.jpg").write_bytes(b"e")
    metadata.to_csv(extra / "metadata.csv", index=False)
    ham_split().to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "pooled"
    args = ["--ham-split", str(tmp_path / "split.csv"), "--ham-images", str(ham_images), "--extra", str(extra),
            "--out", str(out)]
    assert pooled_split.main(args) == 0
    split, external = read_split(out / "split.csv"), read_split(out / "external.csv")  # valid, lesion-disjoint
    assert len(split) + len(external) == len(ham_split()) + len(metadata)
    assert "external: 12 images" in capsys.readouterr().out
    assert (out / "images" / "ISIC_H0.jpg").read_bytes() == b"h"
    assert (out / "images" / "ISIC_E0.jpg").read_bytes() == b"e"
    from skinscan.factory.sources import source_image_paths  # the sidecar finds each image in its own source

    paths = source_image_paths(out / "split.csv", split)
    assert {p.parent for p in paths} == {ham_images.resolve(), (extra / "images").resolve()}
    assert pooled_split.main(args) == 0  # a rerun keeps the links
    assert "0 new links" in capsys.readouterr().out
    (extra / "images" / "ISIC_E0.jpg").unlink()
    assert pooled_split.main(args + ["--out", str(tmp_path / "other")]) == 2
    assert "ISIC_E0.jpg is in none of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pooled_split.main(args + ["--val-fraction", "1.5"])
    with pytest.raises(SystemExit):
        pooled_split.main(["--ham-split", str(tmp_path / "missing.csv"), "--extra", str(extra)])
    assert "skinscan data split --seed 0" in capsys.readouterr().err
