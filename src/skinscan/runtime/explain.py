"""Explanation overlays: a model package's `cam` output (Grad-CAM of the top class) drawn over the image.

The map itself comes from the model graph (`skinscan.factory.export.PackagedModel`, docs/EXPLAIN.md); this module only
upsamples and draws it. matplotlib is imported when an overlay is drawn, so neither the runtime nor
`skinscan predict` without `--explain` loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from skinscan.runtime.classifier import Prediction

OVERLAY_ALPHA = 0.45  # heatmap opacity: the lesion must stay visible under it


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


def save_overlay(image: np.ndarray, prediction: Prediction, path: str | Path, dpi: int = 150) -> Path:
    """Draw `prediction.cam` over `image` with a colour bar and the top-3 diagnoses as the title; write a PNG.

    image: the model's input, uint8 [H, W, 3] (`Classifier.preprocess`: the package's resize rule applied),
    since that is what the map covers. Raises ValueError when the prediction has no map.
    """
    if prediction.cam is None:
        raise ValueError("this prediction has no Grad-CAM map: the model package has no `cam` output; re-export it "
                         "with `skinscan export`")
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    height, width = image.shape[:2]
    heat = upsample(prediction.cam, (height, width))
    figure = Figure(figsize=(width / 100 + 1.0, height / 100 + 0.8), dpi=dpi)
    axes = figure.add_subplot()
    axes.imshow(image)
    shown = axes.imshow(heat, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
    axes.set_axis_off()
    axes.set_title(overlay_title(prediction), fontsize=8)
    bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.03)
    bar.set_label(f"Grad-CAM for {prediction.label} (relative)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    axes.text(0.5, -0.02, "skinscan: a screening aid, not a diagnosis", transform=axes.transAxes, ha="center",
              va="top", fontsize=6, color="0.4")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.05)
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
