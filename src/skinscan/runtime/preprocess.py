"""Image decoding and the resize rule shared by training, the Python runtime and (mirrored) the web app.

Imports nothing of ours: a model package's metadata says which rule and size to use, this module applies it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ResizeRule = Literal["stretch", "center_crop"]
RESIZE_RULES: tuple[str, ...] = ("stretch", "center_crop")

# Refuse images above this many pixels before decoding them (decompression bombs). 100 MP covers every
# phone camera we know of; JPEGs that large are decoded at reduced scale anyway (see `load_image`).
MAX_IMAGE_PIXELS = 100_000_000
MIN_IMAGE_SIDE = 16

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageError(ValueError):
    """An input image that cannot be used; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The resize rule of a model: the input `size` as (height, width) and how to get there."""

    size: tuple[int, int] = (224, 224)
    resize: ResizeRule = "center_crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"unknown resize rule {self.resize!r}; expected one of {RESIZE_RULES}")

    def to_json(self) -> dict:
        return {"size": list(self.size), "resize": self.resize}

    @classmethod
    def from_json(cls, data: dict) -> PreprocessConfig:
        return cls(size=(int(data["size"][0]), int(data["size"][1])), resize=data["resize"])


def _open(source: str | Path | bytes) -> Image.Image:
    """Open lazily (header only). Paths are opened by Pillow itself, which closes the file after decoding."""
    name = "the image bytes" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise ImageError("the image is empty (0 bytes); pass a JPEG or PNG photo")
    if not isinstance(source, (bytes, str, Path)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, a PIL image "
                         "or an HxWx3 uint8 array")
    try:
        with warnings.catch_warnings():  # Pillow warns above 89 MP; `load_image` applies our own limit right after
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise ImageError(f"cannot open {name}: it does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"cannot open {name}: it is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"cannot open {name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read (JPEG, PNG, WebP, ...)") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name} is too large to decode safely ({error}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports damaged headers as OSError ("Truncated File Read", bad BMP depth, ...).
        raise ImageError(f"{name} is damaged or truncated ({error}); re-export or re-take the photo") from None


def load_image(source: ImageSource, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode any supported input to an 8-bit RGB PIL image, upright (EXIF orientation applied).

    `min_size` (height, width) lets JPEG decoding run at a reduced scale (Pillow `draft`) while keeping
    at least that many pixels: a 12 MP camera frame then decodes 4-8x faster and in a fraction of the memory.
    """
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    image = source if isinstance(source, Image.Image) else _open(source)
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"the image is {width}x{height} = {width * height / 1e6:.0f} MP, above the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit; downscale it first"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"the image is only {width}x{height} pixels; use a photo at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    try:
        if min_size is not None and image.format == "JPEG":
            image.draft("RGB", _draft_request(image.size, min_size))
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"the image data is corrupt or truncated ({error}); re-export or re-take it") from None


def _draft_request(image_size: tuple[int, int], min_size: tuple[int, int]) -> tuple[int, int]:
    # draft() keeps both sides >= the request; ask for the model's input scaled to the image's aspect so
    # that the shorter side (the one centre-crop scales to) keeps enough pixels. EXIF rotation may swap
    # the axes, so request the larger side for both.
    side = max(min_size)
    width, height = image_size
    scale = side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        image.load()
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not black or undefined colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"an image array must be HxWx3 RGB (or HxW grey), got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8)
    return load_image(Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB"))


def resize_to_input(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Apply the model's resize rule: an RGB image -> uint8 array of shape (H, W, 3).

    "stretch" scales both axes to the input size. "center_crop" takes the largest centred box with the
    input's aspect ratio (so the shorter side fits) and scales it to the input size. Bilinear with
    Pillow's antialiasing when shrinking.
    """
    height, width = config.size
    box = None
    if config.resize == "center_crop":
        box = center_crop_box(image.size, (height, width))
    resized = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.uint8)


def center_crop_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred (left, top, right, bottom) box with the aspect ratio of `size` = (height, width)."""
    image_width, image_height = image_size
    target_height, target_width = size
    scale = min(image_width / target_width, image_height / target_height)
    # min() with the image side: floating point must never make the box leave the image (Pillow refuses it).
    crop_width, crop_height = min(image_width, target_width * scale), min(image_height, target_height * scale)
    left = max(0.0, (image_width - crop_width) / 2)
    top = max(0.0, (image_height - crop_height) / 2)
    return (left, top, left + crop_width, top + crop_height)


def preprocess(source: ImageSource, config: PreprocessConfig) -> np.ndarray:
    """Decode and resize in one step: any supported input -> the model's uint8 (H, W, 3) input."""
    return resize_to_input(load_image(source, min_size=config.size), config)
