"""Tests of skinscan.runtime.preprocess: the resize rules, decoding of every input kind, and the errors on bad input."""

from __future__ import annotations

import contextlib
import gc
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import skinscan.runtime.preprocess
from skinscan.runtime.preprocess import (
    RESIZE_RULES,
    ImageError,
    PreprocessConfig,
    center_crop_box,
    load_image,
    preprocess,
    resize_to_input,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# database=None: no .hypothesis folder in the repository
PROPERTY = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def quadrants(width: int, height: int) -> Image.Image:
    """Top left red, top right green, bottom left blue, bottom right white."""
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    image.paste(RED, (0, 0, half_w, half_h))
    image.paste(GREEN, (half_w, 0, width, half_h))
    image.paste(BLUE, (0, half_h, half_w, height))
    image.paste(WHITE, (half_w, half_h, width, height))
    return image


def bands(width: int, height: int, horizontal: bool) -> Image.Image:
    """Green with a red and a blue band (1/4 of the long side each) at the two ends of the long axis."""
    image = Image.new("RGB", (width, height), GREEN)
    if horizontal:  # bands at left and right
        edge = width // 4
        image.paste(RED, (0, 0, edge, height))
        image.paste(BLUE, (width - edge, 0, width, height))
    else:  # bands at top and bottom
        edge = height // 4
        image.paste(RED, (0, 0, width, edge))
        image.paste(BLUE, (0, height - edge, width, height))
    return image


def close(pixel, colour, tolerance: int = 2) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(colour)) <= tolerance))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes (the pixel data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def noise_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=90)


# --------------------------------------------------------------------------- center_crop_box
IMAGE_SIZES = {"landscape": (400, 300), "portrait": (300, 400), "square": (256, 256), "panorama": (1000, 100)}
INPUT_SIZES = [(224, 224), (168, 224), (224, 168)]  # (height, width)


@pytest.mark.parametrize("image_size", IMAGE_SIZES.values(), ids=IMAGE_SIZES.keys())
@pytest.mark.parametrize("size", INPUT_SIZES)
def test_center_crop_box_is_the_largest_centred_box_with_the_input_aspect(image_size, size):
    width, height = image_size
    left, top, right, bottom = center_crop_box(image_size, size)
    eps = 1e-9
    assert -eps <= left < right <= width + eps
    assert -eps <= top < bottom <= height + eps
    assert (right - left) / (bottom - top) == pytest.approx(size[1] / size[0])  # size is (height, width)
    assert (left + right) / 2 == pytest.approx(width / 2)
    assert (top + bottom) / 2 == pytest.approx(height / 2)
    # largest: it spans the full width or the full height
    assert (right - left) == pytest.approx(width) or (bottom - top) == pytest.approx(height)


# (image size, input size) pairs whose box once came out a hair outside the image (floating point)
CROP_EDGE_CASES = [((600, 450), (224, 224)), ((450, 600), (224, 224)), ((450, 600), (168, 224)),
                  ((600, 450), (224, 168)), ((29, 29), (224, 224)), ((16, 29), (27, 8))]


@pytest.mark.parametrize(("image_size", "size"), CROP_EDGE_CASES)
def test_center_crop_box_never_leaves_the_image(image_size, size):
    width, height = image_size
    left, top, right, bottom = center_crop_box(image_size, size)
    assert left >= 0 and top >= 0 and right <= width and bottom <= height, (left, top, right, bottom)


@pytest.mark.parametrize(("image_size", "size"), CROP_EDGE_CASES)
def test_center_crop_works_for_every_image_size(image_size, size):
    out = preprocess(Image.new("RGB", image_size, (10, 20, 30)), PreprocessConfig(size=size, resize="center_crop"))
    assert out.shape == (*size, 3)


def test_center_crop_box_values():
    assert center_crop_box((400, 300), (224, 224)) == pytest.approx((50, 0, 350, 300))
    assert center_crop_box((300, 400), (224, 224)) == pytest.approx((0, 50, 300, 350))
    assert center_crop_box((256, 256), (224, 224)) == pytest.approx((0, 0, 256, 256))
    # 4:3 input from a square image: full width, 3/4 of the height
    assert center_crop_box((400, 400), (300, 400)) == pytest.approx((0, 50, 400, 350))
    # 4:3 input from a wider 2:1 image: full height, 4/3 of it as the width
    assert center_crop_box((600, 300), (300, 400)) == pytest.approx((100, 0, 500, 300))


# --------------------------------------------------------------------------- resize_to_input
@pytest.mark.parametrize("rule", RESIZE_RULES)
@pytest.mark.parametrize("image_size", IMAGE_SIZES.values(), ids=IMAGE_SIZES.keys())
@pytest.mark.parametrize("size", INPUT_SIZES)
def test_resize_to_input_shape_and_dtype(rule, image_size, size):
    out = resize_to_input(quadrants(*image_size), PreprocessConfig(size=size, resize=rule))
    assert out.shape == (*size, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("image_size", IMAGE_SIZES.values(), ids=IMAGE_SIZES.keys())
@pytest.mark.parametrize("size", INPUT_SIZES)
def test_stretch_keeps_all_four_quadrants(image_size, size):
    out = resize_to_input(quadrants(*image_size), PreprocessConfig(size=size, resize="stretch"))
    assert close(out[0, 0], RED)
    assert close(out[0, -1], GREEN)
    assert close(out[-1, 0], BLUE)
    assert close(out[-1, -1], WHITE)


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_center_crop_keeps_the_centre_of_a_landscape_image(size):
    # 1000x300: even a 4:3 crop is only 400 wide (300..700), well inside the green middle (250..750)
    image = bands(1000, 300, horizontal=True)
    out = resize_to_input(image, PreprocessConfig(size=size, resize="center_crop"))
    assert close(out.reshape(-1, 3).min(axis=0), GREEN) and close(out.reshape(-1, 3).max(axis=0), GREEN)
    stretched = resize_to_input(image, PreprocessConfig(size=size, resize="stretch"))
    assert close(stretched[size[0] // 2, 0], RED) and close(stretched[size[0] // 2, -1], BLUE)


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_center_crop_keeps_the_centre_of_a_portrait_image(size):
    image = bands(300, 1000, horizontal=False)
    out = resize_to_input(image, PreprocessConfig(size=size, resize="center_crop"))
    assert close(out.reshape(-1, 3).min(axis=0), GREEN) and close(out.reshape(-1, 3).max(axis=0), GREEN)
    stretched = resize_to_input(image, PreprocessConfig(size=size, resize="stretch"))
    assert close(stretched[0, size[1] // 2], RED) and close(stretched[-1, size[1] // 2], BLUE)


def test_center_crop_of_a_square_image_to_a_wide_input_cuts_top_and_bottom():
    # (height, width) = (168, 224) from 300x300: the crop is 300 wide and 225 high, rows 37.5..262.5,
    # so 30-pixel bands at the top and bottom are cut (with the axes swapped they would be kept)
    image = Image.new("RGB", (300, 300), GREEN)
    image.paste(RED, (0, 0, 300, 30))
    image.paste(BLUE, (0, 270, 300, 300))
    out = resize_to_input(image, PreprocessConfig(size=(168, 224), resize="center_crop"))
    assert out.shape == (168, 224, 3)
    assert close(out.reshape(-1, 3).min(axis=0), GREEN) and close(out.reshape(-1, 3).max(axis=0), GREEN)


def test_center_crop_and_stretch_agree_on_a_square_image():
    image = quadrants(256, 256)
    crop = resize_to_input(image, PreprocessConfig(size=(224, 224), resize="center_crop"))
    stretch = resize_to_input(image, PreprocessConfig(size=(224, 224), resize="stretch"))
    np.testing.assert_array_equal(crop, stretch)
    assert close(crop[0, 0], RED) and close(crop[-1, -1], WHITE)


def test_preprocess_config_json_and_unknown_rule():
    config = PreprocessConfig(size=(168, 224), resize="stretch")
    assert PreprocessConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="resize rule"):
        PreprocessConfig(resize="squash")


# --------------------------------------------------------------------------- load_image: orientation
def half_red_half_blue(width: int = 60, height: int = 40) -> Image.Image:
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


# EXIF orientation -> (decoded width, height, where the red left half of the stored image ends up)
ORIENTATIONS = {1: (60, 40, "left"), 3: (60, 40, "right"), 6: (40, 60, "top"), 8: (40, 60, "bottom")}


def red_side(image: Image.Image) -> str:
    """Which half of a half-red, half-blue image is the red one."""
    pixels = np.asarray(image, dtype=float)
    h, w = pixels.shape[:2]
    halves = {"left": pixels[:, : w // 2], "right": pixels[:, w - w // 2 :], "top": pixels[: h // 2],
              "bottom": pixels[h - h // 2 :]}
    redness = {side: half[..., 0].mean() - half[..., 2].mean() for side, half in halves.items()}
    side = max(redness, key=redness.get)
    assert redness[side] > 200, redness  # a clean red half, not a mixture
    return side


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("min_size", [None, (16, 16)])
def test_exif_orientation_is_applied(orientation, min_size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(half_red_half_blue(), "JPEG", exif=exif, quality=95)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    width, height, side = ORIENTATIONS[orientation]
    image = load_image(data, min_size=min_size)
    assert image.mode == "RGB"
    if min_size is None:
        assert image.size == (width, height)
    else:  # draft may halve a 60x40 JPEG to 30x20, still >= 16 on each side and still rotated
        assert image.size[0] / image.size[1] == pytest.approx(width / height)
        assert min(image.size) >= 16
    assert red_side(image) == side


def test_exif_orientation_of_an_opened_pil_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(half_red_half_blue(), "JPEG", exif=exif, quality=95))
    with Image.open(path) as opened:
        for source in (path, str(path), opened):
            image = load_image(source)
            assert image.size == (40, 60)
            assert red_side(image) == "top"


@pytest.mark.parametrize("content", ["image", "text"])
def test_load_image_closes_the_file_it_opens(tmp_path, content):
    path = tmp_path / "photo.jpg"
    if content == "image":
        path.write_bytes(encode(half_red_half_blue(), "JPEG"))
    else:
        path.write_text("not a photo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with contextlib.suppress(ImageError):
            load_image(path)
        gc.collect()
    unclosed = [str(w.message) for w in caught
                if issubclass(w.category, ResourceWarning) and str(path) in str(w.message)]
    assert not unclosed


# --------------------------------------------------------------------------- load_image: modes
def rgb(source, **kwargs) -> np.ndarray:
    image = load_image(source, **kwargs)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_rgba_gets_a_white_background(as_bytes):
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    image.paste((255, 0, 0, 255), (0, 0, 16, 32))  # opaque red left half
    image.paste((0, 0, 0, 128), (16, 16, 32, 32))  # half-transparent black bottom right
    pixels = rgb(encode(image) if as_bytes else image)
    assert close(pixels[8, 8], RED)
    assert close(pixels[4, 24], WHITE)  # not black
    assert close(pixels[24, 24], (127, 127, 127), 2)


def test_la_gets_a_white_background():
    image = Image.new("LA", (32, 32), (0, 0))
    image.paste((50, 255), (0, 0, 16, 32))
    pixels = rgb(encode(image))
    assert close(pixels[8, 8], (50, 50, 50)) and close(pixels[8, 24], WHITE)


def test_palette_image():
    image = quadrants(32, 32).quantize(colors=4)
    assert image.mode == "P"
    pixels = rgb(encode(image))
    assert close(pixels[0, 0], RED) and close(pixels[0, -1], GREEN)
    assert close(pixels[-1, 0], BLUE) and close(pixels[-1, -1], WHITE)


def test_palette_image_with_a_transparent_index_gets_a_white_background():
    image = quadrants(32, 32).quantize(colors=4)
    transparent = image.getpixel((0, 0))  # the red index
    data = encode(image, "PNG", transparency=transparent)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    pixels = rgb(data)
    assert close(pixels[0, 0], WHITE) and close(pixels[0, -1], GREEN)


def test_grayscale_image():
    image = Image.new("L", (32, 32), 77)
    image.paste(200, (0, 0, 16, 32))
    for source in (image, encode(image), encode(image, "JPEG", quality=95)):
        pixels = rgb(source)
        assert close(pixels[16, 4], (200, 200, 200)) and close(pixels[16, 28], (77, 77, 77))


def test_cmyk_jpeg():
    colour = (200, 30, 40)
    data = encode(Image.new("RGB", (32, 32), colour).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert close(rgb(data)[16, 16], colour, 6)


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    array = np.kron(values, np.ones((16, 16), dtype=np.uint16))  # 32x32, four 16x16 blocks
    data = encode(Image.fromarray(array))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = rgb(data)
    expected = {(0, 0): 0, (0, 20): 64, (20, 0): 128, (20, 20): 255}  # 65535 -> 255, 32768 -> 128, ...
    for (y, x), value in expected.items():
        assert close(pixels[y, x], (value,) * 3, 1), (y, x, pixels[y, x])


def test_uint8_rgb_array_is_kept_exactly():
    array = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb(array), array)
    np.testing.assert_array_equal(rgb(np.asfortranarray(array)), array)


def test_grey_array_becomes_three_equal_channels():
    array = np.random.default_rng(1).integers(0, 256, size=(20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(rgb(array), np.stack([array] * 3, axis=-1))


def test_float_array_in_unit_range_is_scaled_to_8_bits():
    array = np.random.default_rng(2).random((20, 30, 3))
    np.testing.assert_array_equal(rgb(array), np.round(array * 255).astype(np.uint8))
    np.testing.assert_array_equal(rgb(array.astype(np.float32)), np.round(array.astype(np.float32) * 255))


def test_float_array_in_8_bit_range_is_rounded():
    array = np.full((20, 20, 3), 100.4)
    array[:, :10] = 250.6
    pixels = rgb(array)
    assert (pixels[:, :10] == 251).all() and (pixels[:, 10:] == 100).all()


# --------------------------------------------------------------------------- load_image: draft decoding
@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return encode(quadrants(2400, 1800), "JPEG", quality=85)


@pytest.mark.parametrize("min_size", [(224, 224), (168, 224), (224, 168), (300, 300), (450, 450), (64, 64)])
def test_draft_decodes_a_large_jpeg_smaller_but_not_below_min_size(large_jpeg, min_size):
    image = load_image(large_jpeg, min_size=min_size)
    width, height = image.size
    assert width < 2400 and height < 1800, "draft did not reduce the decoding scale"
    assert width / height == pytest.approx(2400 / 1800, rel=0.01)
    assert height >= min_size[0] and width >= min_size[1]
    assert min(width, height) >= max(min_size)  # the shorter side is enough even if EXIF rotates it
    # and it is still the same picture
    pixels = np.asarray(image)
    assert close(pixels[10, 10], RED, 10) and close(pixels[-10, -10], WHITE, 10)


def test_draft_never_goes_below_the_requested_size(large_jpeg):
    # 1800 / 2 = 900 < 1000: no reduction possible
    assert load_image(large_jpeg, min_size=(1000, 1000)).size == (2400, 1800)
    assert load_image(large_jpeg, min_size=(1800, 2400)).size == (2400, 1800)
    assert load_image(large_jpeg).size == (2400, 1800)  # no min_size: full size


def test_preprocess_of_a_large_jpeg_matches_full_decoding(large_jpeg):
    config = PreprocessConfig(size=(168, 224), resize="center_crop")
    fast = preprocess(large_jpeg, config)
    full = resize_to_input(load_image(large_jpeg), config)
    assert fast.shape == full.shape == (168, 224, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


# --------------------------------------------------------------------------- errors
def image_error(source, *, match: str, min_size=None) -> ImageError:
    with pytest.raises(ImageError, match=match) as error:
        load_image(source, min_size=min_size)
    with pytest.raises(ImageError, match=match):
        preprocess(source, PreprocessConfig())
    return error.value


def test_empty_bytes():
    image_error(b"", match="empty")


def test_text_bytes():
    image_error(b"hello, this is a text file\n", match="not an image")


def test_text_file(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("not a photo")
    assert str(path) in str(image_error(path, match="not an image"))


def test_missing_file(tmp_path):
    image_error(tmp_path / "absent.jpg", match="cannot open")


@pytest.mark.parametrize("min_size", [None, (32, 32)])
def test_truncated_jpeg(min_size):
    data = noise_jpeg()
    image_error(data[: len(data) // 2], match="truncated", min_size=min_size)


TRUNCATABLE = {"JPEG": noise_jpeg(24, 16), "PNG": encode(quadrants(24, 16), "PNG"),
               "WEBP": encode(quadrants(24, 16), "WEBP"), "BMP": encode(quadrants(24, 16), "BMP"),
               "GIF": encode(quadrants(24, 16).quantize(colors=4), "GIF"),
               "TIFF": encode(quadrants(24, 16), "TIFF")}


@pytest.mark.parametrize("fmt", list(TRUNCATABLE))
def test_image_truncated_anywhere_gives_image_error(fmt):
    data = TRUNCATABLE[fmt]
    for cut in range(len(data)):
        try:
            out = preprocess(data[:cut], PreprocessConfig(size=(16, 16)))
        except ImageError:
            continue
        assert out.shape == (16, 16, 3)  # only when what was cut off is not needed (e.g. a PNG's IEND)


def test_one_pixel_image():
    image_error(encode(Image.new("RGB", (1, 1))), match="1x1")
    image_error(encode(Image.new("RGB", (400, 10))), match="400x10")


def test_header_far_above_the_pixel_limit():
    # 20000x20000 = 400 MP: Pillow itself refuses it as a decompression bomb, before our check
    error = image_error(png_header(20000, 20000), match="too large")
    assert "downscale" in str(error)


def test_header_above_our_pixel_limit():
    # 12000x10000 = 120 MP: above MAX_IMAGE_PIXELS (100 MP), below Pillow's own error threshold (~179 MP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        error = image_error(png_header(12000, 10000), match="12000x10000")
    assert "100 MP limit" in str(error)


def test_monkeypatched_pixel_limit(monkeypatch):
    monkeypatch.setattr(skinscan.runtime.preprocess, "MAX_IMAGE_PIXELS", 50_000)
    image = Image.new("RGB", (300, 300))
    for source in (image, encode(image), np.zeros((300, 300, 3), np.uint8)):
        image_error(source, match="300x300")
    assert load_image(np.zeros((200, 200, 3), np.uint8)).size == (200, 200)  # 40,000 pixels pass


@pytest.mark.parametrize("shape", [(20, 20, 2), (20, 20, 1), (20, 20, 5), (20,), (20, 20, 3, 1)])
def test_wrong_shaped_array(shape):
    error = image_error(np.zeros(shape, np.uint8), match="shape")
    assert str(shape) in str(error)


def test_too_small_array():
    image_error(np.zeros((10, 100, 3), np.uint8), match="100x10")
    image_error(np.zeros((0, 0, 3), np.uint8), match="0x0")


# --------------------------------------------------------------------------- properties
MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK")
JPEG_MODES = ("RGB", "L", "CMYK")


@st.composite
def images(draw):
    width, height = draw(st.integers(16, 400)), draw(st.integers(16, 400))
    mode = draw(st.sampled_from(MODES))
    kind = draw(st.sampled_from(["pil", "png", "jpeg", "array"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if kind == "array":
        array = pixels[..., 0] if mode == "L" else pixels
        return array, (width, height)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode == "P":
        image = image.quantize(colors=16)
    elif mode != "RGB":
        image = image.convert(mode)
    if kind == "pil":
        return image, (width, height)
    if kind == "jpeg" and mode in JPEG_MODES:
        return encode(image, "JPEG", quality=75), (width, height)
    return encode(image, "TIFF" if mode == "CMYK" else "PNG"), (width, height)


def both_resize_rules():
    return pytest.mark.parametrize("rule", ["stretch", "center_crop"])


@both_resize_rules()
@PROPERTY
@example(source=(Image.new("RGB", (29, 29)), (29, 29)), height=224, width=224)
@given(source=images(), height=st.integers(8, 256), width=st.integers(8, 256))
def test_preprocess_returns_the_configured_shape(source, height, width, rule):
    source, _ = source
    out = preprocess(source, PreprocessConfig(size=(height, width), resize=rule))
    assert isinstance(out, np.ndarray)
    assert out.shape == (height, width, 3)
    assert out.dtype == np.uint8


@both_resize_rules()
@PROPERTY
@example(width=29, height=29, colour=(1, 2, 3), size=(224, 224), fmt="PNG")
@given(width=st.integers(16, 400), height=st.integers(16, 400), colour=st.tuples(*[st.integers(0, 255)] * 3),
       size=st.tuples(st.integers(8, 256), st.integers(8, 256)), fmt=st.sampled_from(["PNG", "JPEG"]))
def test_preprocess_keeps_a_uniform_colour(width, height, colour, size, rule, fmt):
    data = encode(Image.new("RGB", (width, height), colour), fmt, quality=95)
    out = preprocess(data, PreprocessConfig(size=size, resize=rule))
    assert out.shape == (*size, 3)
    tolerance = 0 if fmt == "PNG" else 8  # JPEG: chroma subsampling and quantisation
    assert np.abs(out.astype(int) - np.array(colour)).max() <= tolerance


@PROPERTY
@given(width=st.integers(16, 800), height=st.integers(16, 800),
       min_size=st.tuples(st.integers(8, 300), st.integers(8, 300)))
def test_draft_keeps_the_shorter_side_at_least_the_requested_size(width, height, min_size):
    data = encode(Image.new("RGB", (width, height), (90, 120, 30)), "JPEG", quality=75)
    image = load_image(data, min_size=min_size)
    assert image.size[0] <= width and image.size[1] <= height
    assert min(image.size) >= min(max(min_size), width, height)


def check_array_or_image_error(data: bytes) -> None:
    config = PreprocessConfig(size=(32, 48), resize="center_crop")
    try:
        out = preprocess(data, config)
    except ImageError as error:
        assert str(error)  # a message that says what was wrong
        return
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


@PROPERTY
@given(data=st.binary(max_size=4096))
def test_random_bytes_give_an_array_or_an_image_error(data):
    check_array_or_image_error(data)


def png_idat_start(data: bytes) -> int:
    return data.index(b"IDAT") + 4  # past the chunks Pillow parses in Image.open


def jpeg_scan_start(data: bytes) -> int:
    """The offset of the entropy-coded data, after the JPEG's header segments (SOS marker + its segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


# Valid images with bytes changed or cut off reach far deeper into the decoders than random bytes. JPEG and
# PNG are damaged only after their headers (header damage is covered by the truncation test).
DAMAGEABLE = [
    (noise_jpeg(40, 30), jpeg_scan_start(noise_jpeg(40, 30))),
    (encode(quadrants(40, 30), "PNG"), png_idat_start(encode(quadrants(40, 30), "PNG"))),
    (encode(quadrants(40, 30).quantize(colors=4), "GIF"), 0),
]


@PROPERTY
@given(image=st.sampled_from(DAMAGEABLE), cut=st.floats(0, 1),
       changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8))
def test_damaged_images_give_an_array_or_an_image_error(image, cut, changes):
    data, start = image
    data = bytearray(data[: start + max(1, int((len(data) - start) * cut))])
    for position, value in changes:
        data[start + int(position * (len(data) - start))] = value
    check_array_or_image_error(bytes(data))


@PROPERTY
@example(data=b"\xff\xd8\xff\xe0\x00\x10JF")  # a JPEG cut inside its first (APP0) segment
@given(data=st.binary(max_size=512).map(lambda tail: b"BM" + tail) | st.binary(max_size=512))
def test_random_bytes_behind_image_signatures_give_an_array_or_an_image_error(data):
    check_array_or_image_error(data)
