"""Real images that are not dermoscopic lesion photos, for measuring the "cannot assess" gate.

Why these: the gate must be judged on images nobody on this project made or chose to suit it. The sample
images that ship inside scikit-image, scikit-learn and matplotlib are exactly that: fixed, public, licensed
for redistribution, installable offline from PyPI, and varied (people, animals, objects, landscapes,
microscopy, a retina fundus photo, astronomy, text, synthetic test patterns). The skin close-ups are crops
of the two portraits among them (faces and cheeks), upscaled to photo size: the nearest thing to "a phone
pointed at skin without a lesion" that a package ships.

Every image is used whole and, for the photos big enough, as four overlapping quadrant crops (what a user
gets pointing a camera at part of a scene), so each group has enough images for a rate to mean something;
the groups are reported separately. Needs scikit-image (the `dev` extra); images that scikit-image would
have to download (not bundled in its wheel) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

# scikit-image's bundled sample images (skimage.data.<name>()); the ones that need a download are skipped.
SKIMAGE_SAMPLES = ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea",
                   "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                   "shepp_logan_phantom", "text")
MATPLOTLIB_SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
# Bare-skin regions of the two portraits, (left, top, right, bottom) in the original pixels.
SKIN_CROPS = {
    "astronaut": {"face": (170, 75, 280, 190), "left cheek": (182, 112, 210, 140), "forehead": (198, 86, 252, 104),
                  "right cheek": (240, 112, 268, 140)},
    "grace_hopper.jpg": {"face": (160, 150, 370, 330), "left cheek": (180, 235, 240, 300),
                         "chin and neck": (225, 320, 305, 380), "right cheek": (290, 235, 345, 300)},
}
# The ordinary (not dermoscopic) photos of skin, split by source photo: the dermoscopy score is fitted on crops
# of one portrait and measured on crops of the other, never on the same face.
ORDINARY_SKIN_FIT, ORDINARY_SKIN_HELD_OUT = "astronaut", "grace_hopper.jpg"
SKIN_CLOSE_UP_SIZE = (600, 450)  # (width, height): a modest photo, larger than the model input
QUADRANT_MIN_SIDE = 256  # crop photos at least this large into quadrants too


@dataclass(frozen=True)
class NonLesionImage:
    group: str  # "photos and scans", "photo crops", "skin close-ups"
    name: str
    image: Image.Image  # RGB


def _as_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:  # RGBA on white, as the runtime does
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        array = (array[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    image = Image.fromarray(array)
    return image.convert("RGB")


def sample_images() -> dict[str, Image.Image]:
    """name -> RGB image, for every bundled sample this machine can load without a network."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = {}
    for name in SKIMAGE_SAMPLES:
        try:
            images[name] = _as_rgb(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs pooch/a download: not bundled, skip it
            continue
    left, right = skimage.data.stereo_motorcycle()[:2]
    images["stereo_motorcycle left"], images["stereo_motorcycle right"] = _as_rgb(left), _as_rgb(right)
    bunch = load_sample_images()
    for filename, array in zip(bunch.filenames, bunch.images, strict=True):
        images[filename.rsplit("/", 1)[-1]] = _as_rgb(array)
    for filename in MATPLOTLIB_SAMPLES:
        with matplotlib.cbook.get_sample_data(filename, asfileobj=True) as handle:
            image = Image.open(handle)
            image.load()
        images[filename] = _as_rgb(np.asarray(image.convert("RGBA")))
    return images


def quadrant_crops(image: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    """Four overlapping crops, each 60% of the width and height, anchored at the corners."""
    width, height = image.size
    crop_width, crop_height = round(0.6 * width), round(0.6 * height)
    for name, (left, top) in {"top left": (0, 0), "top right": (width - crop_width, 0),
                              "bottom left": (0, height - crop_height),
                              "bottom right": (width - crop_width, height - crop_height)}.items():
        yield name, image.crop((left, top, left + crop_width, top + crop_height))


def non_lesion_corpus() -> list[NonLesionImage]:
    """The whole corpus: every sample image, quadrant crops of the larger ones, and skin close-ups."""
    samples = sample_images()
    corpus = [NonLesionImage("photos and scans", name, image) for name, image in samples.items()]
    for name, image in samples.items():
        if min(image.size) >= QUADRANT_MIN_SIDE:
            corpus += [NonLesionImage("photo crops", f"{name} ({where})", crop)
                       for where, crop in quadrant_crops(image)]
    for source, crops in SKIN_CROPS.items():
        for where, box in crops.items():
            crop = samples[source].crop(box)
            scale = max(SKIN_CLOSE_UP_SIZE[0] / crop.width, SKIN_CLOSE_UP_SIZE[1] / crop.height)
            close_up = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
            corpus.append(NonLesionImage("skin close-ups", f"{source} ({where})", close_up))
    return corpus


def ordinary_skin_photos(source: str, count: int, seed: int = 0) -> list[NonLesionImage]:
    """`count` random close-ups of bare skin from one portrait (`SKIN_CROPS[source]`'s face box): squares of
    15-100% of the box's shorter side at a random place in it, scaled to photo size. What a phone pointed at
    skin without a dermatoscope gives, from the only licensed portraits a package ships (two; see the module
    docstring): a small set, so the model card says how small."""
    image = sample_images()[source]
    left, top, right, bottom = SKIN_CROPS[source]["face"]
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(count):
        side = rng.uniform(0.15, 1.0) * min(right - left, bottom - top)
        x, y = rng.uniform(left, right - side), rng.uniform(top, bottom - side)
        crop = image.crop((round(x), round(y), round(x + side), round(y + side)))
        close_up = crop.resize((SKIN_CLOSE_UP_SIZE[1], SKIN_CLOSE_UP_SIZE[1]), Image.Resampling.LANCZOS)
        photos.append(NonLesionImage("ordinary skin photos", f"{source} (skin crop {i})", close_up))
    return photos


def folder_corpus(folder, suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> list[NonLesionImage]:
    """Every image of a folder (not its subfolders), whole and, when large enough, as quadrant crops: a second,
    fresh non-lesion set for `skinscan gate --fresh-non-lesions` (e.g. OpenCV's sample images), measured as
    the corpus is. Unreadable files are skipped; an empty result is an error the caller reports."""
    from pathlib import Path

    items = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in suffixes:
            continue
        try:
            with Image.open(path) as opened:
                image = _as_rgb(np.asarray(opened.convert("RGBA")))
        except OSError:
            continue
        items.append(NonLesionImage("fresh: whole images", path.name, image))
        if min(image.size) >= QUADRANT_MIN_SIDE:
            items += [NonLesionImage("fresh: crops", f"{path.name} ({where})", crop)
                      for where, crop in quadrant_crops(image)]
    return items
