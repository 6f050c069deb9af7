"""Batch augmentation for dermoscopy, done on whole uint8 batches on the training device.

Dermoscopic images have no "up": any rotation and flip is a valid view of the same lesion, as are
moderate zoom and colour/illumination changes between dermatoscopes. One affine `grid_sample` per batch
does rotation + flip + zoom + shift together, far cheaper on a 2-core CPU than per-image PIL transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation: bool = True              # any angle (dermoscopy is rotation invariant)
    flip: bool = True                  # horizontal and vertical mirror
    zoom: tuple[float, float] = (0.85, 1.35)  # >1 zooms in, <1 out (reflection fills the border)
    aspect: tuple[float, float] = (0.85, 1.18)
    shift: float = 0.1                 # max translation, as a fraction of the frame
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.03                  # fraction of a full hue turn
    degrade_prob: float = 0.0          # share of images (not already low-resolution) blurred to degrade_size and back
    degrade_size: int = 84             # shorter side of the degraded copy: the ISIC 2019 extra images' 84 px
    vignette_prob: float = 0.0         # share of images given a dark circular dermatoscope vignette


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy that does not make the host wait for the GPU.

    On CUDA the tensor is first copied into pinned (page-locked) memory, from which the copy to the GPU is
    asynchronous (`non_blocking`): the host goes on queueing work. An ordinary `.to("cuda")` of a CPU tensor
    waits until the GPU has finished everything queued before it, so a few small ones per step (random
    augmentation parameters) would stall every step. torch's caching host allocator reuses the pinned
    buffers and keeps each alive until its copy is done. On the CPU it is the tensor itself.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def random_affine_theta(n: int, height: int, width: int, config: AugmentConfig,
                        generator: torch.Generator) -> torch.Tensor:
    """Affine matrices (N, 2, 3) for a random rotation/flip/zoom/shift of each image, for `F.affine_grid`.

    Built in pixel units so a rotation of a non-square frame is a true rotation, then converted to
    `grid_sample`'s normalised [-1, 1] coordinates. Drawn on the host (the generator is a CPU one, so runs are
    reproducible on any device); the grid itself is built on the images' device (it is N*H*W*2 floats).
    """
    angle = _uniform(0, 2 * math.pi, n, generator) if config.rotation else torch.zeros(n)
    zoom = torch.exp(_uniform(math.log(config.zoom[0]), math.log(config.zoom[1]), n, generator))
    aspect = torch.exp(_uniform(math.log(config.aspect[0]), math.log(config.aspect[1]), n, generator))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if config.flip else torch.ones(n)
    shift_x = _uniform(-config.shift, config.shift, n, generator)
    shift_y = _uniform(-config.shift, config.shift, n, generator)

    half_w, half_h = width / 2, height / 2
    scale_x = flip * torch.sqrt(aspect) / zoom
    scale_y = 1 / (torch.sqrt(aspect) * zoom)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output pixel offset (u*half_w, v*half_h) -> source pixel offset R @ diag(scale) @ offset, normalised.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * scale_x * half_w / half_w
    theta[:, 0, 1] = -sin * scale_y * half_h / half_w
    theta[:, 1, 0] = sin * scale_x * half_w / half_h
    theta[:, 1, 1] = cos * scale_y * half_h / half_h
    theta[:, 0, 2] = shift_x * 2
    theta[:, 1, 2] = shift_y * 2
    return theta


def color_jitter(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue on float RGB in [0, 255], NCHW.

    All four are linear maps of the RGB vector, so they compose into one 3x3 matrix plus offset per
    image, applied in a single batched matmul (8x faster than one tensor pass per operation).
    """
    n = images.shape[0]
    brightness = _uniform(1 - config.brightness, 1 + config.brightness, n, generator)
    contrast = _uniform(1 - config.contrast, 1 + config.contrast, n, generator)
    saturation = _uniform(1 - config.saturation, 1 + config.saturation, n, generator)
    hue = _uniform(-config.hue, config.hue, n, generator)
    eye = torch.eye(3).expand(n, 3, 3)
    luma = torch.tensor([0.299, 0.587, 0.114])
    # saturation: x -> s*x + (1-s)*luma(x): blend towards the grey of each pixel
    saturate = saturation.view(n, 1, 1) * eye + (1 - saturation).view(n, 1, 1) * luma.expand(n, 3, 3)
    matrix = _hue_rotation(hue) @ saturate * (contrast * brightness).view(n, 1, 1)
    # contrast: x -> c*x + (1-c)*mean grey level of the (brightened) image
    # The parameters are drawn on the host: move the small per-image tensors to the images' device.
    grey_mean = images.mean(dim=(1, 2, 3)) * to_device(brightness, images.device)
    offset = (to_device(1 - contrast, images.device) * grey_mean).view(n, 1).expand(n, 3)
    offset = (to_device(_hue_rotation(hue) @ saturate, images.device) @ offset.unsqueeze(-1)).squeeze(-1)
    flat = images.reshape(n, 3, -1)
    out = torch.baddbmm(offset.unsqueeze(-1), to_device(matrix, images.device), flat)
    return out.view_as(images).clamp_(0, 255)


def degrade_resolution(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                       low_resolution: torch.Tensor | None = None) -> torch.Tensor:
    """With probability `degrade_prob`, shrink an image to `degrade_size` px on its shorter side and back.

    Why: in a pooled training set the BCN20000 images exist only at 84 px, and BCN is 23% melanoma and 23% bcc
    against HAM10000's 11% and 5%; a model can learn "blurry = BCN = malignant" instead of dermoscopy. Giving
    full-resolution images the same blur at some rate breaks that shortcut. Images already at low resolution
    (`low_resolution`, a bool per image) are left alone: blurring them again would be a different degradation.
    Float NCHW in, same shape out; antialiased bilinear down, bilinear up, as a photo taken at that resolution
    and then resized for the network would look.
    """
    n, _, height, width = images.shape
    chosen = torch.rand(n, generator=generator) < config.degrade_prob
    if low_resolution is not None:
        chosen &= ~low_resolution.cpu()
    if config.degrade_prob <= 0 or not chosen.any():
        return images
    scale = config.degrade_size / min(height, width)
    if scale >= 1:
        return images
    small_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    index = to_device(chosen.nonzero().squeeze(1), images.device)
    small = F.interpolate(images[index], size=small_size, mode="bilinear", antialias=True, align_corners=False)
    out = images.clone()
    out[index] = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return out


def add_vignette(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """With probability `vignette_prob`, black out what lies outside a random circle, as many dermatoscopes do.

    Why: a round black frame is common in some sources (many BCN20000 and ISIC archive images) and rare in
    HAM10000's cropped images; if only one source has it, "black circle" becomes a feature of that source's
    class mix. The circle's centre is near the frame's centre (within 10% of the shorter side) and its radius is
    0.7-1.0x half the longer side, so the corners go dark and the lesion in the middle stays; the edge is soft
    (a few pixels), as a real lens's is.
    """
    n, _, height, width = images.shape
    chosen = torch.rand(n, generator=generator) < config.vignette_prob
    if config.vignette_prob <= 0 or not chosen.any():
        return images
    k = int(chosen.sum())
    short, long = min(height, width), max(height, width)
    centre_y = height / 2 + _uniform(-0.1, 0.1, k, generator) * short
    centre_x = width / 2 + _uniform(-0.1, 0.1, k, generator) * short
    radius = _uniform(0.7, 1.0, k, generator) * long / 2
    softness = max(1.0, short / 60)
    device = images.device
    ys = torch.arange(height, dtype=torch.float32, device=device).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=device).view(1, 1, width) + 0.5
    distance = torch.sqrt((ys - to_device(centre_y, device).view(k, 1, 1)) ** 2
                          + (xs - to_device(centre_x, device).view(k, 1, 1)) ** 2)
    mask = torch.sigmoid((to_device(radius, device).view(k, 1, 1) - distance) / softness)
    index = to_device(chosen.nonzero().squeeze(1), device)
    out = images.clone()
    out[index] = images[index] * mask.unsqueeze(1)
    return out


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """Per-image 3x3 rotation about the grey axis of RGB space by `turns` of a full circle."""
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    third, root = 1 / 3, math.sqrt(1 / 3)
    diag = cos + (1 - cos) * third
    plus = (1 - cos) * third + root * sin
    minus = (1 - cos) * third - root * sin
    return torch.stack([
        torch.stack([diag, minus, plus], -1),
        torch.stack([plus, diag, minus], -1),
        torch.stack([minus, plus, diag], -1),
    ], -2)


def augment_batch(images_uint8_nhwc: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  low_resolution: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> augmented float (N, 3, H, W) in [0, 255], same size, channels_last.

    Order: resolution degradation first (it stands for how the photo was taken), then the geometric transform,
    the vignette (the dermatoscope's frame, drawn on the transformed view) and the colour jitter. Each step
    draws from `generator` only when its probability is above 0, so a recipe without them replays the same
    random draws as before they existed.
    """
    images = images_uint8_nhwc.permute(0, 3, 1, 2).float().contiguous()
    if config.degrade_prob > 0:
        images = degrade_resolution(images, config, generator, low_resolution)
    n, _, height, width = images.shape
    theta = to_device(random_affine_theta(n, height, width, config, generator), images.device)
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.vignette_prob > 0:
        images = add_vignette(images, config, generator)
    images = color_jitter(images, config, generator)
    return images.contiguous(memory_format=torch.channels_last)


def to_model_input(images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) channels_last, without augmentation (evaluation)."""
    return images_uint8_nhwc.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
