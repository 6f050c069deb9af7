"""The scores behind "cannot assess", computed inside the graph, and their fit on the training data.

What the graph computes for every image (the `assess` output, one column per score):
- `lesion_distance`: how far the image's early feature statistics lie from those of the training lesions.
  For two early MobileNetV3 blocks (`GATE_LAYERS`) the per-channel spatial mean and standard deviation
  form a vector; its squared Mahalanobis distance to the training images' Gaussian (Ledoit-Wolf shrunk
  covariance) is divided by the training median, and the blocks are summed.
- `sharpness`: variance of the Laplacian of the luma (the classic focus measure).
- `brightness`: mean luma (0-255).
- `colourfulness`: Hasler and Suesstrunk's colourfulness (dermoscopy and skin are never grey).

Why this design, measured (docs/RESULTS.md, "Cannot assess"): with the threshold that keeps 99% of
validation lesions, the network's own confidence (max logit, energy) rejected 3% of the non-lesion images
(`skinscan.factory.nonlesion`): a fine-tuned classifier is confidently wrong on a cat. The Mahalanobis distance of
the final pooled features rejected 18%, that of the penultimate layer 13%; the early blocks' statistics
(texture and colour, before the network specialises) 83-89%, blocks 4+5 together 89%. The quality scores
catch what feature distance misses: dark, washed-out, blurred, and grey images (the moon, a clock).
The distance is a few hundred FLOPs on features the network computes anyway; the quality scores are a
handful of passes over the input image (see `image_quality` for their cost).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from skinscan.runtime.assess import SCORES, choose_thresholds

__all__ = ["SCORES", "LesionDistance", "choose_thresholds", "feature_statistics", "gate_statistics",
           "image_quality"]

GATE_LAYERS = (4, 5)  # MobileNetV3-Small blocks at stride 16 (40 channels each); see the module docstring
LUMA = (0.299, 0.587, 0.114)
# RGB -> (luma, red - green, (red + green) / 2 - blue): the planes the quality scores read, one per row.
PLANES = (LUMA, (1.0, -1.0, 0.0), (0.5, 0.5, -1.0))


def feature_statistics(feature_map: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, 2C]: per-channel spatial mean and (population) standard deviation."""
    mean = feature_map.mean(dim=(2, 3), keepdim=True)
    centred = feature_map - mean  # two passes: float32's E[x^2] - E[x]^2 loses digits to cancellation
    return torch.cat([mean.flatten(1), torch.sqrt((centred * centred).mean(dim=(2, 3)))], dim=1)


def image_quality(pixels: torch.Tensor) -> torch.Tensor:
    """Float RGB pixels [N, 3, H, W] in 0-255 -> [N, 3]: sharpness, brightness, colourfulness.

    Written for ONNX Runtime's cost model, where every operator is a pass over the image: one MatMul makes
    the three planes the scores read (luma, red-green, yellow-blue: each linear in RGB), one mean and one
    centred second moment give the brightness and the colour statistics of all three at once, and the
    Laplacian is four shifted slices of the luma plane. The first version (a 1-channel 3x3 Conv, which ORT
    pads to its 16-channel blocked layout, and per-plane arithmetic) computed the same numbers ~0.3-0.4 ms
    slower per image in both precisions (`benchmarks/int8_variants_timing.py --baseline`; docs/RESULTS.md,
    "INT8 speed").
    """
    height, width = pixels.shape[2:]
    planes = torch.tensor(PLANES, dtype=pixels.dtype) @ pixels.flatten(2)  # [N, 3, H * W]
    mean = planes.mean(dim=2, keepdim=True)
    centred = planes - mean  # two passes: float32's E[x^2] - E[x]^2 loses digits to cancellation
    variance = (centred * centred).mean(dim=2)
    mean = mean.flatten(1)
    luma = planes[:, 0].reshape(-1, height, width)
    laplacian = (luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
                 - 4 * luma[:, 1:-1, 1:-1])  # "valid": no border effects
    centred_laplacian = laplacian - laplacian.mean(dim=(1, 2), keepdim=True)
    sharpness = (centred_laplacian * centred_laplacian).mean(dim=(1, 2))
    colourfulness = (torch.sqrt(variance[:, 1] + variance[:, 2])
                     + 0.3 * torch.sqrt(mean[:, 1] * mean[:, 1] + mean[:, 2] * mean[:, 2]))
    return torch.stack([sharpness, mean[:, 0], colourfulness], dim=1)


class LesionDistance(nn.Module):
    """Sum over `GATE_LAYERS` of the scaled squared Mahalanobis distance of `feature_statistics`."""

    def __init__(self, dims: dict[int, int]):
        super().__init__()
        self.layers = tuple(dims)
        for layer, dim in dims.items():
            self.register_buffer(f"mean_{layer}", torch.zeros(dim))
            # The precision as P = L L^T: the distance is then ||(x - mean) L||^2, one MatMul per block.
            self.register_buffer(f"whiten_{layer}", torch.eye(dim))

    def forward(self, statistics: dict[int, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for layer in self.layers:
            whitened = (statistics[layer] - getattr(self, f"mean_{layer}")) @ getattr(self, f"whiten_{layer}")
            total = total + (whitened * whitened).sum(dim=1)
        return total

    def fit(self, statistics: dict[int, np.ndarray]) -> None:
        """Fit each block's Gaussian (Ledoit-Wolf shrinkage: 80 dimensions, a few thousand images) and scale
        its distance by the median over the same images, so that the blocks weigh alike in the sum."""
        for layer in self.layers:
            x = statistics[layer].astype(np.float64)
            mean = x.mean(0)
            precision = LedoitWolf().fit(x - mean).precision_
            whiten = np.linalg.cholesky(precision)
            distance = (((x - mean) @ whiten) ** 2).sum(1)
            whiten = whiten / np.sqrt(np.median(distance))
            getattr(self, f"mean_{layer}").copy_(torch.from_numpy(mean))
            getattr(self, f"whiten_{layer}").copy_(torch.from_numpy(whiten))


def gate_statistics(net: nn.Module, normalised: torch.Tensor,
                    last_block: int | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run a torchvision MobileNet's `features` block by block: (its output, statistics of `GATE_LAYERS`).

    last_block: stop after this block (fitting needs only the gate blocks, not the rest of the network).
    """
    statistics = {}
    x = normalised
    blocks = net.features if last_block is None else net.features[:last_block + 1]
    for index, block in enumerate(blocks):
        x = block(x)
        if index in GATE_LAYERS:
            statistics[index] = feature_statistics(x)
    return x, statistics


def gate_dims(net: nn.Module) -> dict[int, int]:
    """The statistics vector's length for each gate block (2 x its output channels)."""
    dims = {}
    for index in GATE_LAYERS:
        convs = [m for m in net.features[index].modules() if isinstance(m, nn.Conv2d)]
        dims[index] = 2 * convs[-1].out_channels
    return dims
