"""Frost layers: the reference's frost photographs when they are installed, stand-ins otherwise.

ImageNet-C blends each image with a random crop of one of its frost photographs
(``make_imagenet_c.py`` draws ``np.random.randint(5)``: the first five of its six
files). The photographs ship as data files inside the imagecorruptions package; when
that package is installed they are read from its folder, found on disk without
importing its code (or from ``$VITSAM_FROST_DIR``). Otherwise each photograph is
replaced by a procedural stand-in of the same size, mean colour and per-channel
spread (a fractal haze with ice needles). ``frost_source()`` says which is in use.

Scale: ImageNet-C crops 224 px at the photograph's own resolution; CIFAR-10-C first
resizes the photograph by 0.2 (``cv2.resize``, bilinear) and crops 32 px. Other image
sizes resize the photograph in proportion (bilinear, like cv2), and a photograph too
small to crop the image from is enlarged until it fits (as imagecorruptions does).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.robustness.corruptions import ops
from vitsam.robustness.corruptions.params import REFERENCE_SIZE

PHOTOS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_DIR_ENV = "VITSAM_FROST_DIR"
# per photograph: (height, width), RGB mean, RGB standard deviation, measured on the files
# of imagecorruptions 1.1.2; the stand-ins copy them
PHOTO_STATS = (((600, 900), (0.305, 0.585, 0.650), (0.106, 0.065, 0.060)),
               ((315, 560), (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
               ((315, 560), (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
               ((350, 527), (0.540, 0.599, 0.648), (0.112, 0.112, 0.117)),
               ((495, 660), (0.441, 0.484, 0.528), (0.174, 0.170, 0.163)))
# photograph pixels per image pixel at each parameter table's reference size
PHOTO_SCALE = {"imagenet": 1.0, "cifar": 0.2}


def photo_dir() -> Path | None:
    """The folder holding the frost photographs: ``$VITSAM_FROST_DIR`` when set, else the
    ``frost`` folder of an installed imagecorruptions package (``find_spec`` locates a
    top-level package without running it), else None."""
    return _locate(os.environ.get(FROST_DIR_ENV))


@functools.lru_cache(maxsize=4)
def _locate(explicit: str | None) -> Path | None:
    if explicit:
        folder = Path(explicit)
        missing = [name for name in PHOTOS if not (folder / name).is_file()]
        if missing:
            raise VitsamError(f"${FROST_DIR_ENV}={explicit} lacks the frost photographs {', '.join(missing)}")
        return folder
    spec = importlib.util.find_spec("imagecorruptions")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "frost"
        if all((folder / name).is_file() for name in PHOTOS):
            return folder
    return None


def frost_source() -> str:
    """'photographs (<folder>)' or 'procedural': what the frost corruption blends in."""
    folder = photo_dir()
    return f"photographs ({folder})" if folder else "procedural"


@functools.lru_cache(maxsize=2)
def _photographs(folder: str | None) -> tuple[torch.Tensor, ...]:
    """The five frost images (3, h, w) in [0, 1], RGB: read from ``folder`` or made."""
    if folder is None:
        return tuple(_stand_in(index) for index in range(len(PHOTOS)))
    return tuple(torch.from_numpy(np.array(Image.open(Path(folder) / name).convert("RGB"))).permute(2, 0, 1)
                 .float().div_(255) for name in PHOTOS)


def _stand_in(index: int) -> torch.Tensor:
    """A procedural frost image with photograph ``index``'s size, mean colour and
    spread: diamond-square haze plus ice needles (sparse bright seeds smeared by motion
    blur at two angles, 12 px long like the needles in the 224 px ImageNet-C crops),
    from a fixed seed: the same stand-ins in every run."""
    (height, width), mean, std = PHOTO_STATS[index]
    g = torch.Generator().manual_seed(1000 + index)
    like = torch.zeros(())
    haze = ops.plasma_fractal(1, ops.next_power_of_two(max(height, width)), 1.6, g, like)[:, None, :height, :width]
    seeds = (ops.uniform((1, 1, height, width), 0, 1, g, like) < 0.03).float()
    needles = sum(ops.motion_blur(seeds, 12, 6.0, ops.uniform((1,), -180, 180, g, like)) for _ in range(2))
    pattern = 0.6 * haze + 0.8 * needles / needles.amax().clamp_min(1e-6)
    pattern = (pattern - pattern.mean()) / pattern.std().clamp_min(1e-6)           # (1, 1, h, w)
    return (torch.tensor(mean).view(3, 1, 1) + torch.tensor(std).view(3, 1, 1) * pattern[0]).clamp(0, 1)


@functools.lru_cache(maxsize=8)
def _resized(folder: str | None, table: str, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The photographs at the scale of a (height, width) image under ``table``, each
    at least one pixel larger than the image (the crop offset is drawn in [0, excess))."""
    zoom = PHOTO_SCALE[table] * min(height, width) / REFERENCE_SIZE[table]
    out = []
    for photo in _photographs(folder):
        h, w = photo.shape[-2:]
        scale = max(zoom, (height + 1) / h, (width + 1) / w)
        size = (max(round(h * scale), height + 1), max(round(w * scale), width + 1))
        if size != (h, w):
            photo = F.interpolate(photo[None], size=size, mode="bilinear", align_corners=False)[0].clamp_(0, 1)
        out.append(photo)
    return tuple(out)


def frost_layers(batch: int, height: int, width: int, table: str, generator, like: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) frost: per image one of the five photographs, cropped at random."""
    folder = photo_dir()
    photos = _resized(str(folder) if folder else None, table, height, width)
    choice = ops.integers((batch,), 0, len(photos), generator, like).tolist()
    offsets = ops.uniform((batch, 2), 0, 1, generator, like).tolist()
    layers = []
    for index, (u, v) in zip(choice, offsets):
        photo = photos[index]
        top = int(u * (photo.shape[-2] - height))
        left = int(v * (photo.shape[-1] - width))
        layers.append(photo[:, top:top + height, left:left + width])
    return torch.stack(layers).to(like.device, like.dtype)
