"""ImageNet-C-style corruptions on batched tensors (Hendrycks & Dietterich 2019).

``corrupt(images, name, severity, generator=None, params="auto")`` applies one of the
15 ImageNet-C corruptions or the 4 extra ones to float images (B, C, H, W) in [0, 1],
of any size, with 1 or 3 channels, on any device; a seeded generator makes it
deterministic. Two parameter sets (``params.py``): ``"imagenet"`` (ImageNet-C, 224 px)
and ``"cifar"`` (CIFAR-10-C, 32 px, much milder); ``"auto"`` picks CIFAR-10-C's for
images whose shorter side is below 128 px (MNIST, CIFAR, 28-64 px), ImageNet-C's
otherwise. Lengths in pixels are rescaled by ``min(H, W) / reference side``.
"""
from __future__ import annotations

import torch

from vitsam.errors import VitsamError, unknown_choice
from vitsam.robustness.corruptions.functions import FUNCTIONS
from vitsam.robustness.corruptions.params import PARAMETER_SETS, REFERENCE_SIZE

# ImageNet-C's 15 (in its order: noise, blur, weather, digital) and its 4 extras
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
PARAMS_CHOICES = ("auto", "imagenet", "cifar")
SMALL_IMAGE_SIDE = 128   # below this, "auto" uses the CIFAR-10-C parameters


def resolve_params(params: str, height: int, width: int) -> str:
    if params not in PARAMS_CHOICES:
        raise unknown_choice("corruption parameter set", params, PARAMS_CHOICES)
    if params == "auto":
        return "cifar" if min(height, width) < SMALL_IMAGE_SIDE else "imagenet"
    return params


def check_names(names) -> tuple[str, ...]:
    for name in names:
        if name not in FUNCTIONS:
            raise unknown_choice("corruption", name, ALL_CORRUPTIONS)
    return tuple(names)


def check_severity(severity) -> int:
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise VitsamError(f"corruption severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    return int(severity)


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None,
            params: str = "auto") -> torch.Tensor:
    """Corrupt a batch (B, C, H, W) in [0, 1]; returns the same shape, dtype and device,
    clamped to [0, 1]. ``generator`` (CPU by default) seeds all random draws."""
    check_names([name])
    severity = check_severity(severity)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise VitsamError(f"corrupt expects images (B, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    table = resolve_params(params, height, width)
    scale = min(height, width) / REFERENCE_SIZE[table]
    c = PARAMETER_SETS[table][name][severity - 1]
    with torch.no_grad():
        out = FUNCTIONS[name](images.float(), c, scale, generator)
    return out.clamp(0, 1).to(images.dtype)
