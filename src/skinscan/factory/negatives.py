"""Generic images that are not dermoscopic lesion photos, for *fitting* the gate's dermoscopy score.

Why a second set: the non-lesion corpus (`skinscan.factory.nonlesion`) measures the gate and must stay a
measuring set; fitted on, it would grade its own homework. A score that tells "a dermoscopic lesion photo"
from "anything else" needs examples of anything else that nobody on this project chose: the photos that
Debian ships as desktop wallpapers and as backgrounds of children's programs (landscapes, water, plants,
buildings, rooms, sports fields, abstract art, a few drawings), fetched with `apt-get download` and unpacked
with `dpkg-deb`, both present on any Debian or Ubuntu machine. Their licences (GPL-2+, CC-BY-SA-3.0) allow
use and redistribution; the folder written here keeps each package's copyright file beside its images.

Each source photo gives several random crops of random size (what a phone pointed at part of a scene
gives); photos are split into fit and held-out parts *by photo*, so the held-out crops measure the score
on scenes it never saw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Debian package -> the folders (inside the package) whose images are used. Chosen for photos; the
# children's programs' cartoon costumes and icons are left out.
PACKAGES = {
    "scratch": ("usr/share/scratch/Media/Backgrounds",),
    "plasma-workspace-wallpapers": ("usr/share/wallpapers",),
    "mate-backgrounds": ("usr/share/backgrounds",),
    "tuxpaint-data": ("usr/share/tuxpaint/starters",),
    # Photographs of animals (fur, feathers, scales), food, plants, people and things, cut out on a transparent
    # background: what a camera sees up close that is brown, textured and round like a lesion. The symbols,
    # flags and cartoons are left out.
    "tuxpaint-stamps-default": tuple(f"usr/share/tuxpaint/stamps/{kind}" for kind in (
        "animals", "food", "plants", "people", "household", "clothes")),
}
CUTOUTS = {"tuxpaint-stamps-default"}  # packages whose images are cut-outs (alpha): composited, cropped inside
CUTOUT_MIN_SIDE = 100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_SIDE = 200          # smaller files are icons and thumbnails
INDEX_FILE = "index.json"
HELD_OUT_SHARE = 0.2    # photos (not crops) kept out of the fit
WORKING_SIDE = 1600     # photos are shrunk to this longest side before cropping (a 10% crop stays > 120 px)


class NegativesError(RuntimeError):
    """Fetching or reading the generic images failed; the message says what to do."""


@dataclass(frozen=True)
class SourcePhoto:
    package: str
    path: Path          # the image file inside the unpacked package
    part: str           # "fit" or "held_out", decided by a hash of package + name (stable across machines)


def _part(package: str, relative: str) -> str:
    digest = hashlib.sha256(f"{package}/{relative}".encode()).digest()
    return "held_out" if digest[0] / 256 < HELD_OUT_SHARE else "fit"


def _one_per_wallpaper(files: list[Path]) -> list[Path]:
    """KDE wallpapers ship each picture at many resolutions (`<name>/contents/images*/WxH.jpg`): keep the
    largest file of each picture folder so that one photo is not counted ten times."""
    best: dict[Path, Path] = {}
    for path in files:
        key = path.parent.parent if path.parent.name.startswith("images") else path
        if key not in best or path.stat().st_size > best[key].stat().st_size:
            best[key] = path
    return sorted(best.values())


def unpack(deb_files: list[Path], out_dir: Path) -> Path:
    """Unpack downloaded `.deb` files into out_dir/<package>/ and write out_dir/index.json (package, image,
    part, licence file). Keeps only images at least MIN_SIDE px on the shorter side in PACKAGES' folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for deb in sorted(deb_files):
        package = deb.name.split("_", 1)[0]
        if package not in PACKAGES:
            continue
        target = out_dir / package
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            raise NegativesError(f"{deb}: dpkg-deb could not unpack it ({result.stderr.strip()}); delete the file "
                                 "and fetch it again")
        files = [path for folder in PACKAGES[package] for path in sorted((target / folder).rglob("*"))
                 if path.suffix.lower() in IMAGE_SUFFIXES]
        min_side = CUTOUT_MIN_SIDE if package in CUTOUTS else MIN_SIDE
        for path in _one_per_wallpaper(files):
            try:
                with Image.open(path) as image:
                    if min(image.size) < min_side:
                        continue
            except OSError:
                continue  # a broken file in a package is the package's problem, not a reason to stop
            relative = str(path.relative_to(target))
            entries.append({"package": package, "image": relative, "part": _part(package, relative),
                            "licence": f"{package}/usr/share/doc/{package}/copyright"})
    if not entries:
        raise NegativesError(f"no images found in {', '.join(map(str, deb_files)) or 'no files'}: expected the "
                             f"Debian packages {', '.join(PACKAGES)}")
    (out_dir / INDEX_FILE).write_text(json.dumps({"format": 1, "images": entries}, indent=1))
    return out_dir


def fetch(out_dir: str | Path, apt_get: str = "apt-get") -> Path:
    """Download PACKAGES with `apt-get download` (no root needed, apt's own mirrors and signatures) and unpack
    them into out_dir (`unpack`). Needs a network; run once, then pass the folder to `skinscan regate`."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            result = subprocess.run([apt_get, "download", *PACKAGES], cwd=scratch, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise NegativesError(f"{apt_get} not found: fetch the generic images on a Debian or Ubuntu machine, "
                                 "or unpack the .deb files of " + ", ".join(PACKAGES) + " yourself") from error
        if result.returncode != 0:
            raise NegativesError(f"apt-get download failed ({result.stderr.strip()[-300:]}); check the network "
                                 "and `apt-get update`")
        return unpack(sorted(Path(scratch).glob("*.deb")), out_dir)


def source_photos(folder: str | Path) -> list[SourcePhoto]:
    folder = Path(folder)
    index = folder / INDEX_FILE
    if not index.is_file():
        raise NegativesError(f"{index} not found: --negatives must be a folder that `skinscan regate --negatives DIR` "
                             "fetched into (it does so when the folder has no index), or `negatives.fetch` wrote")
    entries = json.loads(index.read_text())["images"]
    return [SourcePhoto(e["package"], folder / e["package"] / e["image"], e["part"]) for e in entries]


def folder_photos(folder: str | Path) -> list[SourcePhoto]:
    """Every .jpg/.jpeg/.png under a folder of your own photos (e.g. ordinary photos of skin or of lesions taken
    without a dermatoscope, for `skinscan regate --ordinary-photos`), split into fit / held-out parts by a hash
    of the file's path inside the folder, as the packages' photos are. Their licence is yours to check."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NegativesError(f"{folder} is not a folder")
    photos = [SourcePhoto(folder.name, path, _part(folder.name, str(path.relative_to(folder))))
              for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        raise NegativesError(f"{folder}: no .jpg or .png photos in it")
    return photos


def random_crops(photos: list[SourcePhoto], part: str, count: int, seed: int = 0,
                 photo_size: tuple[int, int] = (600, 450), smallest: float = 0.1) -> list[Image.Image]:
    """`count` RGB crops of the `part` photos ("fit" or "held_out") among `photos` (`source_photos` of an indexed
    folder, or `folder_photos`), spread evenly over them: each a random 4:3 window of `smallest`-100% of the
    photo's shorter side, scaled to photo_size. Unreadable files are an error naming the file."""
    photos = [p for p in photos if p.part == part]
    if not photos:
        raise NegativesError(f"no {part} photos to crop: every photo given fell in the other part (the split is by "
                             "a hash of each name); add more photos")
    rng = np.random.default_rng(seed)
    crops = []
    for index, photo in enumerate(photos):
        try:
            with Image.open(photo.path) as image:
                image.draft("RGB", (photo_size[0] * 2, photo_size[1] * 2))  # JPEG: decode at a reduced size
                image = image.convert("RGBA")
        except OSError as error:
            raise NegativesError(f"{photo.path}: not a readable image ({error}); remove or replace it") from None
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BILINEAR)  # crops need no more
        box = image.getchannel("A").getbbox() or (0, 0, image.width, image.height)
        cutout = photo.package in CUTOUTS
        for _ in range(count // len(photos) + (index < count % len(photos))):
            canvas = image
            if cutout:  # on a random plain background, cropped within the object: from whole to close-up
                canvas = Image.new("RGBA", image.size, tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,))
                canvas.alpha_composite(image)
            window = _random_window(canvas.convert("RGB"), box if cutout else None, rng, 0.4 if cutout else smallest)
            crops.append(window.resize(photo_size, Image.Resampling.BILINEAR))
    return crops


def _random_window(image: Image.Image, box: tuple[int, int, int, int] | None, rng: np.random.Generator,
                   smallest: float) -> Image.Image:
    """A random 4:3 window of `smallest`-100% of the box's (default: the image's) usable height, inside it."""
    left, top, right, bottom = box or (0, 0, image.width, image.height)
    height = rng.uniform(smallest, 1.0) * min(bottom - top, (right - left) * 3 / 4)
    width = height * 4 / 3
    x, y = rng.uniform(left, right - width), rng.uniform(top, bottom - height)
    return image.crop((round(x), round(y), round(x + width), round(y + height)))
