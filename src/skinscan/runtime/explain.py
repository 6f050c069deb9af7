"""Explanation overlays: a model package's `cam` output (Grad-CAM of the top class) drawn over the image.

The map itself comes from the model graph (`skinscan.factory.export.PackagedModel`, docs/EXPLAIN.md); this module only
upsamples and draws it, with Pillow alone: `skinscan predict --explain` works in the lean runtime install (no
matplotlib, which is the `report` extra's plotting library).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from skinscan.runtime.classifier import Prediction

OVERLAY_ALPHA = 0.45  # heatmap opacity: the lesion must stay visible under it
FOOTER = "skinscan: a screening aid, not a diagnosis"


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [h, w] map -> [H, W] (size = (H, W)), bilinear, float32.

    Each map cell summarises one 32x32-pixel patch of the model's input; bilinear upsampling (as pytorch-grad-cam
    does) shows that smoothly instead of as blocks.
    """
    height, width = size
    resized = Image.fromarray(np.asarray(cam, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay_title(prediction: Prediction) -> str:
    """Two lines: the top diagnosis in full, then the next two, each with its probability."""
    (code, name, probability), *others = prediction.top
    rest = "   ".join(f"{c} {p:.1%}" for c, _, p in others)
    return f"{name} ({code}) {probability:.1%}" + (f"\nthen {rest}" if rest else "")


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB floats in [0, 1] on the "jet" scale (blue low, red high), as matplotlib draws it."""
    x = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    return np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)


def save_overlay(image: np.ndarray, prediction: Prediction, path: str | Path, scale: int = 2) -> Path:
    """Draw `prediction.cam` over `image` with a colour bar and the top-3 diagnoses as the title; write a PNG.

    image: the model's input, uint8 [H, W, 3] (`Classifier.preprocess`: the package's resize rule applied),
    since that is what the map covers; drawn `scale` times larger so the text stays legible. Raises ValueError
    when the prediction has no map.
    """
    if prediction.cam is None:
        raise ValueError("this prediction has no Grad-CAM map: the model package has no `cam` output; re-export it "
                         "with `skinscan export`")
    height, width = image.shape[:2]
    heat = upsample(prediction.cam, (height, width))
    blended = (1.0 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * 255.0 * jet(heat)
    picture = Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8))
    picture = picture.resize((width * scale, height * scale), Image.Resampling.BICUBIC)

    title_font, small_font = ImageFont.load_default(size=8 * scale), ImageFont.load_default(size=6 * scale)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title = overlay_title(prediction)
    _, _, _, title_height = measure.multiline_textbbox((0, 0), title, font=title_font, spacing=2 * scale)
    pad, bar_width = 6 * scale, 8 * scale
    top = pad + title_height + pad
    caption = f"Grad-CAM for {prediction.label} (relative)"
    ticks = {1.0: "1.0", 0.5: "0.5", 0.0: "0.0"}
    tick_width = max(measure.textlength(text, font=small_font) for text in ticks.values())
    bar_left = pad + picture.width + 4 * scale
    canvas = Image.new("RGB", (int(bar_left + bar_width + 3 * scale + tick_width + 14 * scale + pad),
                               top + picture.height + 14 * scale), "white")
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((pad + picture.width / 2, pad), title, fill="black", font=title_font, anchor="ma",
                        align="center", spacing=2 * scale)
    canvas.paste(picture, (pad, top))

    # The colour bar: 1 at the top, 0 at the bottom, with three ticks and its caption turned sideways.
    levels = np.linspace(1.0, 0.0, picture.height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    canvas.paste(Image.fromarray((jet(levels) * 255).round().astype(np.uint8)), (bar_left, top))
    draw.rectangle((bar_left, top, bar_left + bar_width - 1, top + picture.height - 1), outline="black")
    for value, text in ticks.items():
        y = top + (1.0 - value) * (picture.height - 1)
        draw.line((bar_left + bar_width, y, bar_left + bar_width + 2 * scale, y), fill="black")
        draw.text((bar_left + bar_width + 3 * scale, y), text, fill="black", font=small_font, anchor="lm")
    label = Image.new("RGB", (int(measure.textlength(caption, font=small_font)) + 2, 8 * scale), "white")
    ImageDraw.Draw(label).text((1, 0), caption, fill="black", font=small_font)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (int(bar_left + bar_width + 3 * scale + tick_width + 4 * scale),
                         max(top, top + (picture.height - label.height) // 2)))

    draw.text((pad + picture.width / 2, top + picture.height + 3 * scale), FOOTER, fill=(102, 102, 102),
              font=small_font, anchor="ma")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def overlay_path(out_dir: str | Path, source: str | None, taken: set[Path]) -> Path:
    """`OUT_DIR/<image name>.png`, numbered (`name-2.png`, ...) when two inputs share a name; records it in `taken`."""
    stem = Path(source).stem if source else "image"
    path, number = Path(out_dir) / f"{stem}.png", 1
    while path in taken:
        number += 1
        path = Path(out_dir) / f"{stem}-{number}.png"
    taken.add(path)
    return path
