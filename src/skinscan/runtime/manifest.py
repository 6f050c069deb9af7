"""The model package's manifest: the sha256 of every file, written at packaging and verified at load.

Standard library only: the torch-free runtime and the web app's server both rely on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


class IntegrityError(Exception):
    """A model package file is missing or does not match its manifest (corrupted or tampered with)."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(package_dir: str | Path, extra: dict | None = None) -> Path:
    """List every file of the package (but the manifest itself) with its size and sha256; atomic write."""
    package_dir = Path(package_dir)
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(package_dir.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
    }
    path = package_dir / MANIFEST
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"format": "skinscan-model-package/1", **(extra or {}), "files": files}, indent=2))
    os.replace(temporary, path)
    return path


def read_manifest(package_dir: str | Path) -> dict:
    path = Path(package_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"no {MANIFEST} in {package_dir}: not a skinscan model package "
                             "(re-create it with `skinscan export`)") from None
    except json.JSONDecodeError as error:
        raise IntegrityError(f"{path} is not valid JSON ({error}); reinstall or re-export the model package") from None


def verify_file(package_dir: str | Path, name: str) -> Path:
    """Check one package file against the manifest; raise IntegrityError naming the file and what to do."""
    package_dir = Path(package_dir)
    entry = read_manifest(package_dir).get("files", {}).get(name)
    path = package_dir / name
    if entry is None:
        raise IntegrityError(f"{name} is not listed in {package_dir / MANIFEST}; refusing an unlisted model file")
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; reinstall or re-export the model package")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise IntegrityError(
            f"{path} does not match its manifest (sha256 {actual[:12]}... != {entry['sha256'][:12]}...): the file is "
            "corrupted or was modified. Reinstall skinscan or re-export the package; do not use this file."
        )
    return path
