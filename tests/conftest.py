"""Shared fixtures: where the real HAM10000 copy is, and skipping clearly when it is absent."""

from pathlib import Path

import pytest

from skinscan.data import METADATA_FILE, default_data_dir


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
