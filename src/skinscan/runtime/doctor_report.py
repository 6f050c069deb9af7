"""A one-page screening report for the doctor: the photo, where the model looked, the answer in plain words.

`skinscan predict --report DIR` writes one per image (PNG, and the same page as PDF); the web app draws the
same page on a canvas (`app.js`, "Report for my doctor"). Pillow and numpy only (the runtime install is lean);
the map is upsampled and coloured as the `--explain` overlays are (`skinscan.runtime.explain`).

The page says what the app says, no more: the top diagnoses in plain words with the screening advice, or,
for an image that cannot be assessed, the reason and what to do, and then no diagnosis, percentage or heat map.
The date, the model version and precision and the disclaimer are always on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from skinscan import DISCLAIMER
from skinscan.runtime.explain import jet, upsample

if TYPE_CHECKING:
    from skinscan.runtime.classifier import Prediction

PAGE = (1240, 1754)  # A4 at 150 dpi, portrait
DPI = 150
MARGIN = 80
HEAT_ALPHA = 0.6  # the map's opacity at its peak: strong enough to read, the lesion still shows through
HEAT_FLOOR = 0.15  # map values below this stay transparent: "not looked at" is the photo itself
INK, MUTED, WARN, UNSURE, RULE = (20, 30, 35), (90, 105, 110), (190, 60, 20), (150, 110, 0), (200, 205, 208)

# Plain words, the same sentences as the app (app/plain-words.js, `PLAIN`): what the flag means, what to do.
FLAGGED = "Some features look like skin cancer: see a dermatologist soon."
NOT_FLAGGED = "No strong sign of skin cancer in this image; keep watching it and see a doctor if it changes."
CANNOT_ASSESS = "This image cannot be assessed, so there is no screening result."
HEAT_LEGEND = ("red: where the model looked most", "blue: where it looked least")


@dataclass(frozen=True)
class ReportModel:
    """What the page says about the model that screened the image."""

    version: str | None
    precision: str
    malignant_codes: tuple[str, ...]
    label_names: dict[str, str]


def heat_overlay(image: np.ndarray, cam: np.ndarray) -> Image.Image:
    """The model input uint8 [H, W, 3] under its Grad-CAM map [h, w] (upsampled bilinearly, as the app does)."""
    heat = np.clip(upsample(cam, image.shape[:2]), 0.0, 1.0)
    alpha = HEAT_ALPHA * np.clip((heat - HEAT_FLOOR) / 0.25, 0.0, 1.0)[..., None]
    blended = image.astype(np.float32) * (1 - alpha) + 255.0 * jet(heat) * alpha
    return Image.fromarray(np.round(blended).astype(np.uint8))


def legend_bar(width: int, height: int) -> Image.Image:
    """The colour ramp, blue (left, least) to red (right, most)."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return Image.fromarray((255 * jet(ramp)).astype(np.uint8))


def plain_result(prediction: Prediction, model: ReportModel) -> tuple[str, list[str]]:
    """(the headline, the lines under it), in plain words: the same answer the app gives."""
    if not prediction.assessable:
        message = prediction.cannot_assess_message or prediction.cannot_assess or ""
        return CANNOT_ASSESS, [f"Why: {message}.", "No diagnosis is given for this image; take a new photo."]
    lines = []
    if prediction.malignant:
        likely = max(model.malignant_codes, key=lambda code: prediction.probabilities[code])
        lines.append(f"Most likely type of skin cancer: {model.label_names[likely]}.")
    lines.append("The model's three likeliest diagnoses:")
    lines += [f"{i}. {name}: {probability:.0%}" for i, (_, name, probability) in enumerate(prediction.top, 1)]
    return (FLAGGED if prediction.malignant else NOT_FLAGGED), lines


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system font needed


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def render_report(image: np.ndarray, prediction: Prediction, model: ReportModel,
                  when: dt.datetime | None = None) -> Image.Image:
    """The page as an RGB image (PAGE, white). image: the model's input uint8 [H, W, 3], what the map covers.

    The page's words are also kept in `page.info["Description"]`, which `save_report` writes into the files'
    metadata (PNG text chunk, PDF subject): searchable, and what the tests read back.
    """
    when = when or dt.datetime.now().astimezone()
    page = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(page)
    width = PAGE[0] - 2 * MARGIN
    y = MARGIN
    words = []

    def text(content: str, size: int, fill=INK, gap: int = 10) -> None:
        nonlocal y
        words.append(content)
        font = _font(size)
        for line in _wrap(draw, content, font, width):
            draw.text((MARGIN, y), line, font=font, fill=fill)
            y += int(size * 1.25)
        y += gap

    text("Skin lesion screening report", 52, gap=6)
    text("For your doctor. Made on this device by skinscan; the photo was not sent anywhere.", 26, MUTED, gap=4)
    source = Path(prediction.source).name if prediction.source else "photo"
    text(f"Date: {when:%Y-%m-%d %H:%M %Z}".strip() + f"    Image: {source}", 26, MUTED, gap=4)
    text(f"Model: skinscan {model.version or 'unknown version'} ({model.precision})", 26, MUTED, gap=24)
    draw.line((MARGIN, y, PAGE[0] - MARGIN, y), fill=RULE, width=3)
    y += 30

    # The photo, and beside it the heat map with its legend (or, when the image cannot be assessed, why not).
    gap = 40
    box_width = (width - gap) // 2
    photo = Image.fromarray(image).convert("RGB")
    box_height = round(box_width * photo.height / photo.width)
    page.paste(photo.resize((box_width, box_height), Image.Resampling.LANCZOS), (MARGIN, y))
    right = MARGIN + box_width + gap
    small = _font(24)
    draw.text((MARGIN, y + box_height + 8), "The photo (as the model saw it)", font=small, fill=MUTED)
    if prediction.assessable and prediction.cam is not None:
        heat = heat_overlay(image, prediction.cam).resize((box_width, box_height), Image.Resampling.LANCZOS)
        page.paste(heat, (right, y))
        draw.text((right, y + box_height + 8), "Where the model looked", font=small, fill=MUTED)
        words.append("Where the model looked: " + "; ".join(HEAT_LEGEND))
        bar_y = y + box_height + 44
        page.paste(legend_bar(box_width, 22), (right, bar_y))
        draw.text((right, bar_y + 28), HEAT_LEGEND[1], font=small, fill=MUTED)
        red = HEAT_LEGEND[0]
        draw.text((right + box_width - draw.textlength(red, font=small), bar_y + 56), red, font=small, fill=MUTED)
    else:
        draw.rectangle((right, y, right + box_width, y + box_height), outline=RULE, width=3)
        why = ("No heat map: the image cannot be assessed." if not prediction.assessable
               else "No heat map: this model package has no explanation output.")
        words.append(why)
        for i, line in enumerate(_wrap(draw, why, small, box_width - 40)):
            draw.text((right + 20, y + 20 + 32 * i), line, font=small, fill=MUTED)
    y += box_height + 150

    headline, lines = plain_result(prediction, model)
    colour = UNSURE if not prediction.assessable else WARN if prediction.malignant else INK
    text(headline, 38, colour, gap=16)
    for line in lines:
        text(line, 30, gap=4)

    # The disclaimer, boxed at the foot of the page.
    font = _font(28)
    footer = _wrap(draw, DISCLAIMER, font, width - 40)
    top = PAGE[1] - MARGIN - 36 * len(footer) - 30
    draw.rectangle((MARGIN, top, PAGE[0] - MARGIN, PAGE[1] - MARGIN), outline=WARN, width=3)
    for i, line in enumerate(footer):
        draw.text((MARGIN + 20, top + 15 + 36 * i), line, font=font, fill=INK)
    page.info["Description"] = "\n".join([*words, DISCLAIMER])
    return page


def report_name(source: str | None, index: int) -> str:
    """`<photo name>-report`: a name per image (the index keeps two photos with the same name apart)."""
    stem = Path(source).stem if source else "image"
    return f"{stem}-report" if index == 0 else f"{stem}-{index + 1}-report"


def save_report(page: Image.Image, folder: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Write `name`.png and `name`.pdf into `folder`: (the files written, those of them that replaced a file)."""
    written, replaced = [], []
    description = page.info.get("Description", "")
    for suffix in (".png", ".pdf"):
        path = folder / f"{name}{suffix}"
        if path.exists():
            replaced.append(path)
        if suffix == ".png":
            metadata = PngInfo()
            metadata.add_itxt("Description", description)
            page.save(path, dpi=(DPI, DPI), pnginfo=metadata)
        else:
            page.save(path, resolution=DPI, title="Skin lesion screening report", subject=description)
        written.append(path)
    return written, replaced
