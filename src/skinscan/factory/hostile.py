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


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
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


HOSTILE_INPUTS: tuple[HostileInput, ...] = (
    HostileInput("truncated.jpg", "refuse", "a JPEG cut off half way (an interrupted copy)"),
    HostileInput("corrupt.jpg", "refuse", "a JPEG with its entropy-coded data overwritten"),
    HostileInput("empty.jpg", "refuse", "0 bytes"),
    HostileInput("notes.jpg", "refuse", "a text file named .jpg"),
    HostileInput("bomb.png", "refuse", "a decompression bomb: 144 megapixels in a few kB (the limit is 100)"),
    HostileInput("tiny.png", "refuse", "1x1 pixel"),
    HostileInput("small.png", "classify", "64x48 pixels: decoded; a package with the gate says 'too small'"),
    HostileInput("cmyk.jpg", "classify", "CMYK JPEG (print workflows)"),
    HostileInput("sixteen-bit.png", "classify", "16-bit greyscale PNG (scientific cameras)"),
    HostileInput("rgba.png", "classify", "RGBA PNG with transparency (screenshots)"),
    HostileInput("palette.png", "classify", "palette (P mode) PNG"),
    HostileInput("grey.jpg", "classify", "greyscale JPEG"),
    HostileInput("rotated.jpg", "classify", "EXIF orientation 6 (phone held upright)"),
    HostileInput("animated.gif", "classify", "animated GIF (the first frame is used)"),
    HostileInput("photo.webp", "classify", "WebP"),
)


def _contents() -> dict[str, bytes]:
    """The bytes of each file of `HOSTILE_INPUTS`, by name."""
    lesion = _lesion_like()
    jpeg = _encode(lesion, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgba = lesion.convert("RGBA")
    rgba.putalpha(Image.new("L", lesion.size, 200))
    sixteen_bit = Image.fromarray((np.asarray(lesion.convert("L"), np.uint16) * 257).astype(np.uint16))
    frames = [_lesion_like(seed=i) for i in range(3)]
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.jpg": jpeg[:400] + bytes(range(256)) * 8 + jpeg[400 + 2048:],
        "empty.jpg": b"",
        "notes.jpg": b"patient notes, not an image\n" * 20,
        "bomb.png": decompression_bomb_png(12_000, 12_000),
        "tiny.png": _encode(Image.new("RGB", (1, 1), (200, 150, 130)), "PNG"),
        "small.png": _encode(lesion.resize((64, 48)), "PNG"),
        "cmyk.jpg": _encode(lesion.convert("CMYK"), "JPEG", quality=90),
        "sixteen-bit.png": _encode(sixteen_bit, "PNG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette.png": _encode(lesion.convert("P"), "PNG"),
        "grey.jpg": _encode(lesion.convert("L"), "JPEG", quality=90),
        "rotated.jpg": _encode(lesion, "JPEG", quality=90, exif=exif),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "photo.webp": _encode(lesion, "WEBP", quality=90),
    }


def build_corpus(folder: str | Path) -> list[tuple[Path, HostileInput]]:
    """Write every hostile input into `folder`; returns (path, what is expected of it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contents = _contents()
    written = []
    for entry in HOSTILE_INPUTS:
        path = folder / entry.name
        path.write_bytes(contents[entry.name])
        written.append((path, entry))
    return written
