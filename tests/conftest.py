"""Shared fixtures: where the real HAM10000 copy is, and skipping clearly when it is absent."""

from pathlib import Path

import pytest

from skinscan.factory.data import METADATA_FILE, default_data_dir, lesion_grouped_split, read_metadata, write_split


@pytest.fixture(scope="session")
def ham10000_dir() -> Path:
    data_dir = default_data_dir()
    if not (data_dir / METADATA_FILE).is_file():
        pytest.skip(f"HAM10000 copy not found at {data_dir}; set $SKINSCAN_DATA to a HAM10000 folder")
    return data_dir


@pytest.fixture(scope="session")
def pretrained_v3_small() -> str | None:
    """The local ImageNet weights if this machine has them (CI does); else train from scratch."""
    path = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v3_small_imagenet.pth"
    return str(path) if path.is_file() else None


@pytest.fixture(scope="session")
def split_csv(ham10000_dir, tmp_path_factory) -> Path:
    """The lesion-grouped split of the real data with seed 0 (what scripts/reproduce.sh uses)."""
    path = tmp_path_factory.mktemp("split") / "split.csv"
    write_split(lesion_grouped_split(read_metadata(ham10000_dir), seed=0), path)
    return path
