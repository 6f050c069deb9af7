"""The generic non-lesion photos the gate's dermoscopy score learns from: unpacked from real .deb files (built
here with dpkg-deb), fetched through a stand-in apt-get (the real one needs Debian's mirrors), split by photo,
cropped; bad input gets a clear error."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import numpy as np
import pytest
from PIL import Image

from skinscan.factory.negatives import INDEX_FILE, NegativesError, fetch, random_crops, source_photos, unpack

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")


def _photo(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _deb(tmp_path, package: str, files: dict[str, tuple[int, int] | bytes]) -> object:
    """A real .deb of `package` holding `files` (relative path -> image size, or raw bytes)."""
    root = tmp_path / f"build-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test package\n")
    doc = root / "usr/share/doc" / package / "copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text("License: CC-BY-SA-3.0\n")
    for i, (relative, content) in enumerate(files.items()):
        path = root / relative
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            _photo(path, content, i)
    deb = tmp_path / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture()
def debs(tmp_path):
    backgrounds = "usr/share/scratch/Media/Backgrounds/Nature"
    wallpapers = "usr/share/wallpapers/Hills/contents"
    return [
        _deb(tmp_path, "scratch", {**{f"{backgrounds}/photo{i}.jpg": (480, 360) for i in range(12)},
                                   f"{backgrounds}/icon.png": (48, 48),            # too small: an icon
                                   f"{backgrounds}/broken.jpg": b"not a jpeg",      # broken: skipped
                                   "usr/share/scratch/Media/Costumes/cat.png": (300, 300)}),  # not a chosen folder
        _deb(tmp_path, "plasma-workspace-wallpapers", {f"{wallpapers}/images/1920x1080.jpg": (1920, 1080),
                                                       f"{wallpapers}/images/640x480.jpg": (640, 480),
                                                       f"{wallpapers}/images_dark/1280x720.jpg": (1280, 720)}),
        _deb(tmp_path, "unrelated-package", {"usr/share/backgrounds/x.jpg": (400, 300)}),
    ]


def test_unpack_keeps_photos_of_the_chosen_folders_once_each(debs, tmp_path):
    folder = unpack(debs, tmp_path / "negatives")
    photos = source_photos(folder)
    names = sorted(p.path.name for p in photos)
    # 12 scratch photos; one KDE wallpaper (its largest file); no icon, broken file, costume or unrelated package
    assert len(photos) == 13 and "icon.png" not in names and "cat.png" not in names and "x.jpg" not in names
    assert "1920x1080.jpg" in names and "640x480.jpg" not in names
    index = json.loads((folder / INDEX_FILE).read_text())
    assert all((folder / e["licence"]).is_file() for e in index["images"])  # each package's copyright kept
    parts = {p.part for p in photos}
    assert parts <= {"fit", "held_out"}
    assert source_photos(unpack(debs, tmp_path / "again")) == [  # the split is by name: the same on any machine
        type(p)(p.package, tmp_path / "again" / p.path.relative_to(folder), p.part) for p in photos]


def test_random_crops_are_photo_sized_and_come_from_the_chosen_part(debs, tmp_path):
    folder = unpack(debs, tmp_path / "negatives")
    part = source_photos(folder)[0].part
    crops = random_crops(source_photos(folder), part, 30, seed=1)
    assert len(crops) == 30 and {c.size for c in crops} == {(600, 450)} and {c.mode for c in crops} == {"RGB"}
    again = random_crops(source_photos(folder), part, 30, seed=1)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops, again, strict=True))


def _fake_apt_get(tmp_path, debs, exit_code=0):
    """An `apt-get` stand-in: `apt-get download PKG...` copies the prepared .deb files into its working folder."""
    script = tmp_path / "apt-get"
    copies = "\n".join(f"cp {deb} ." for deb in debs)
    script.write_text(f"#!/bin/sh\n[ \"$1\" = download ] || exit 2\n{copies}\n"
                      f"[ {exit_code} = 0 ] || echo 'E: Unable to locate package' >&2\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_fetch_downloads_and_unpacks(debs, tmp_path):
    folder = fetch(tmp_path / "negatives", apt_get=_fake_apt_get(tmp_path, debs))
    assert len(source_photos(folder)) == 13


def test_fetch_failures_say_what_to_do(debs, tmp_path):
    with pytest.raises(NegativesError, match="apt-get download failed.*Unable to locate"):
        fetch(tmp_path / "a", apt_get=_fake_apt_get(tmp_path, debs, exit_code=100))
    with pytest.raises(NegativesError, match="not found: fetch the generic images on a Debian"):
        fetch(tmp_path / "b", apt_get=str(tmp_path / "no-such-apt-get"))
    with pytest.raises(NegativesError, match="no images found"):
        unpack([debs[2]], tmp_path / "c")  # only a package we do not use


def test_a_folder_without_an_index_is_refused(tmp_path):
    with pytest.raises(NegativesError, match="index.json not found"):
        source_photos(tmp_path)
    corrupt = tmp_path / "corrupt.deb"
    corrupt.write_bytes(b"!<arch>\nnot really")
    (tmp_path / "scratch_1.0_all.deb").write_bytes(corrupt.read_bytes())
    with pytest.raises(NegativesError, match="could not unpack it"):
        unpack([tmp_path / "scratch_1.0_all.deb"], tmp_path / "out")
