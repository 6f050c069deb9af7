"""A corpus of hostile and awkward image files, built on the fly, for testing every way an image gets in.

Each entry says what a correct client does with it: "classify" (a valid image in an unusual form: it must
be decoded like any other) or "refuse" (not a usable image: a clear message naming the problem, no crash,
no hang, bounded memory). tests/test_hostile.py sends the whole corpus through `Classifier.classify`,
`skinscan predict` and the web app's photo upload; the model card lists it.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class HostileInput:
    name: str  # file name, suffix included
    expect: str  # "classify" or "refuse"
    why: str


def _lesion_like(width: int = 200, height: int = 150, seed: int = 0) -> Image.Image:
    """A smooth skin-toned image with a darker blob: decodable content without using a real lesion photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((x - width / 2) / (width / 5)) ** 2 + ((y - height / 2) / (height / 5)) ** 2))
    base = np.array([220, 170, 150], np.float64) - blob[..., None] * np.array([120, 100, 90])
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of a few kB whose header claims width x height pixels (the data is all zeros)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def build_corpus(folder: str | Path) -> list[tuple[Path, HostileInput]]:
    """Write every hostile input into `folder`; returns (path, what is expected of it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lesion = _lesion_like()
    jpeg = _jpeg(lesion)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgba = lesion.convert("RGBA")
    rgba.putalpha(Image.new("L", lesion.size, 200))
    sixteen_bit = Image.fromarray((np.asarray(lesion.convert("L"), np.uint16) * 257).astype(np.uint16))
    frames = [_lesion_like(seed=i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    cmyk = io.BytesIO()
    lesion.convert("CMYK").save(cmyk, "JPEG", quality=90)
    entries: list[tuple[HostileInput, bytes]] = [
        (HostileInput("truncated.jpg", "refuse", "a JPEG cut off half way (an interrupted copy)"),
         jpeg[: len(jpeg) // 2]),
        (HostileInput("corrupt.jpg", "refuse", "a JPEG with its entropy-coded data overwritten"),
         jpeg[:400] + bytes(range(256)) * 8 + jpeg[400 + 2048:]),
        (HostileInput("empty.jpg", "refuse", "0 bytes"), b""),
        (HostileInput("notes.jpg", "refuse", "a text file named .jpg"), b"patient notes, not an image\n" * 20),
        (HostileInput("bomb.png", "refuse", "a decompression bomb: 144 megapixels in a few kB (the limit is 100)"),
         decompression_bomb_png(12_000, 12_000)),
        (HostileInput("tiny.png", "refuse", "1x1 pixel"), _png(Image.new("RGB", (1, 1), (200, 150, 130)))),
        (HostileInput("small.png", "classify", "64x48 pixels: decoded; a package with the gate says 'too small'"),
         _png(lesion.resize((64, 48)))),
        (HostileInput("cmyk.jpg", "classify", "CMYK JPEG (print workflows)"), cmyk.getvalue()),
        (HostileInput("sixteen-bit.png", "classify", "16-bit greyscale PNG (scientific cameras)"), _png(sixteen_bit)),
        (HostileInput("rgba.png", "classify", "RGBA PNG with transparency (screenshots)"), _png(rgba)),
        (HostileInput("palette.png", "classify", "palette (P mode) PNG"), _png(lesion.convert("P"))),
        (HostileInput("grey.jpg", "classify", "greyscale JPEG"), _jpeg(lesion.convert("L"))),
        (HostileInput("rotated.jpg", "classify", "EXIF orientation 6 (phone held upright)"), _jpeg(lesion, exif=exif)),
        (HostileInput("animated.gif", "classify", "animated GIF (the first frame is used)"), gif.getvalue()),
        (HostileInput("photo.webp", "classify", "WebP"), _webp(lesion)),
    ]
    written = []
    for entry, data in entries:
        path = folder / entry.name
        path.write_bytes(data)
        written.append((path, entry))
    return written


def _webp(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=90)
    return buffer.getvalue()
