"""ImageNet-C-style corruptions on batched tensors (Hendrycks & Dietterich 2019).

``corrupt(images, name, severity, generator=None, params="auto", storage="none")`` applies one of the
15 ImageNet-C corruptions or the 4 extra ones to float images (B, C, H, W) in [0, 1],
of any size, with 1 or 3 channels, on any device; a seeded generator makes it
deterministic. Two parameter sets (``params.py``): ``"imagenet"`` (ImageNet-C, 224 px)
and ``"cifar"`` (CIFAR-10-C, 32 px, much milder); ``"auto"`` picks CIFAR-10-C's for
images whose shorter side is below 128 px (MNIST, CIFAR, 28-64 px), ImageNet-C's
otherwise. Lengths in pixels are rescaled by ``min(H, W) / reference side``.

``storage`` adds the step between corruption and evaluation of the released data sets:
``"imagenet-c"`` stores every corrupted image as 8 bits (truncated, numpy's ``np.uint8``)
and then as a JPEG at quality 85 (``make_imagenet_c.py`` saves each image so), so on-the-fly
accuracies are comparable with published ImageNet-C ones; ``"cifar-c"`` truncates to 8 bits
(CIFAR-10-C is stored as a uint8 array); ``"none"`` (the default) keeps the float result.
``frost_source()`` says whether frost uses the reference's photographs or stand-ins.
"""
from __future__ import annotations

import torch

from vitsam.errors import VitsamError, unknown_choice
from vitsam.robustness.corruptions import ops
from vitsam.robustness.corruptions.frost import frost_source
from vitsam.robustness.corruptions.functions import FUNCTIONS
from vitsam.robustness.corruptions.params import PARAMETER_SETS, REFERENCE_SIZE

__all__ = ["ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "PARAMS_CHOICES", "SEVERITIES", "STORAGE_CHOICES",
           "check_names", "check_severity", "check_storage", "corrupt", "frost_source", "resolve_params", "store"]

# ImageNet-C's 15 (in its order: noise, blur, weather, digital) and its 4 extras
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
PARAMS_CHOICES = ("auto", "imagenet", "cifar")
SMALL_IMAGE_SIDE = 128   # below this, "auto" uses the CIFAR-10-C parameters
STORAGE_CHOICES = ("none", "imagenet-c", "cifar-c")
IMAGENET_C_JPEG_QUALITY = 85
# On the CPU a batch is corrupted about 1 MiB of images at a time: a 224 px image and its
# intermediates then stay in the core's L2 cache, several times faster than whole batches.
CHUNK_BYTES = 1 << 20


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


def check_storage(storage: str) -> str:
    if storage not in STORAGE_CHOICES:
        raise unknown_choice("corruption storage", storage, STORAGE_CHOICES)
    return storage


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None,
            params: str = "auto", storage: str = "none") -> torch.Tensor:
    """Corrupt a batch (B, C, H, W) in [0, 1]; returns the same shape, dtype and device,
    clamped to [0, 1]. ``generator`` (CPU by default) seeds all random draws;
    ``storage`` as in the module docstring."""
    check_names([name])
    severity = check_severity(severity)
    check_storage(storage)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise VitsamError(f"corrupt expects images (B, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    table = resolve_params(params, height, width)
    scale = min(height, width) / REFERENCE_SIZE[table]
    c = PARAMETER_SETS[table][name][severity - 1]
    x = images.float()
    if len(x) == 0:
        return images.clone()
    per_chunk = len(x) if x.device.type != "cpu" else max(1, CHUNK_BYTES // (x[0].numel() * 4))
    with torch.no_grad():
        parts = [_clamped(FUNCTIONS[name](part, c, scale, generator, table), part) for part in x.split(per_chunk)]
        out = torch.cat(parts) if len(parts) != 1 else parts[0]
        out = store(out, storage)
    return out.to(images.dtype)


def _clamped(out: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1], in place unless ``out`` shares memory with the caller's images."""
    shared = out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    return out.clamp(0, 1) if shared else out.clamp_(0, 1)


def store(images: torch.Tensor, storage: str) -> torch.Tensor:
    """The released data sets' storage of corrupted images in [0, 1] (module docstring)."""
    if check_storage(storage) == "none":
        return images
    # np.uint8 truncates; the small offset keeps exact 8-bit levels that float32
    # arithmetic leaves a few ulps below (k / 255 * 255 -> k - 1e-5) on their level
    levels = images.mul(255).add_(1e-3).floor_().clamp_(0, 255)
    if storage == "cifar-c":
        return levels.div_(255)
    stored = levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous()
    return ops.from_levels(ops.jpeg_round_trip(stored, IMAGENET_C_JPEG_QUALITY), images)
