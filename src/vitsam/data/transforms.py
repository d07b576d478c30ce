"""Inception-style preprocessing (the paper's only augmentation) without torchvision.

Training: random resized crop + random horizontal flip (Sec. 2 / Appendix: "Inception-style
preprocessing"). Evaluation: resize so that a center crop of ``size`` covers
``crop_fraction`` of the shorter side, then center crop.

Two paths share one crop-box sampler, ``sample_crop_boxes``:
- tensors of equal-size images (in-memory sources, CPU or GPU): every crop and flip of
  the batch is one ``affine_grid`` + ``grid_sample`` call, or, when every box is already
  the output size (``crop_scale=(1, 1)`` on images of the model's size: flips alone), one
  gather of whole pixels, with no resampling (10-20x cheaper);
- Pillow images of varying sizes (folder sources, in loader workers):
  ``Image.resize(size, box=...)`` per image, JPEGs decoded at 1/2, 1/4 or 1/8 scale
  (libjpeg's DCT scaling, ``jpeg_draft``) whenever the crop keeps at least ``size``
  pixels: a 1024 px photo cropped to 224 px decodes about 3x faster.
All randomness comes from an explicit CPU ``torch.Generator``, so a batch's
augmentation is a pure function of the generator's seed, whatever the device.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop: 10 tries, then a center crop


def sample_crop_boxes(sizes: torch.Tensor, scale: tuple, ratio: tuple, generator: torch.Generator) -> torch.Tensor:
    """Inception crop boxes, torchvision's algorithm, for a batch of images.

    sizes: (B, 2) image (height, width). Returns (B, 4) float64 boxes (top, left, height,
    width) in whole pixels. Per image: up to 10 tries of area fraction ~ U(scale) and
    log aspect ratio ~ U(log ratio); the first box that fits wins; if none fits, the
    largest center crop with aspect ratio clamped to ``ratio``. All tries are drawn at
    once (the distribution is the same as drawing them one by one).
    """
    height, width = sizes.double().unbind(1)
    height, width = height[:, None], width[:, None]                             # (B, 1)
    u = torch.rand(len(sizes), CROP_ATTEMPTS, 4, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])      # (B, tries)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)                                  # first fitting try, (B, 1)
    h, w, u_top, u_left = (t.gather(1, first) for t in (h, w, u[..., 2], u[..., 3]))
    top = torch.floor(u_top * (height - h + 1))                                 # uniform in [0, H - h]
    left = torch.floor(u_left * (width - w + 1))
    boxes = torch.cat([top, left, h, w], 1)
    return torch.where(fits.any(1, keepdim=True), boxes, _center_fallback(height, width, ratio))


def _center_fallback(height: torch.Tensor, width: torch.Tensor, ratio: tuple) -> torch.Tensor:
    """torchvision's fallback: the whole image, trimmed to the nearest allowed aspect ratio."""
    in_ratio = width / height
    w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    return torch.cat([torch.floor((height - h) / 2), torch.floor((width - w) / 2), h, w], 1)


def sample_flips(batch: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """(B,) bool: which images to mirror left-right."""
    return torch.rand(batch, generator=generator) < p


# --------------------------------------------------------------------------- batched tensors

def crop_theta(boxes: torch.Tensor, height: int, width: int, flips: torch.Tensor) -> torch.Tensor:
    """(B, 4) boxes (top, left, h, w) -> (B, 2, 3) affine_grid thetas (align_corners=False).

    Normalized coordinates put the image's outer pixel edges at -1 and +1, so the box
    center is 2 * (left + w / 2) / W - 1 and its half-width w / W; a flip negates x.
    """
    top, left, h, w = boxes.unbind(1)
    sign = 1.0 - 2.0 * flips.to(boxes.dtype)
    theta = torch.zeros(len(boxes), 2, 3, dtype=boxes.dtype)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = 2 * (left + w / 2) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = 2 * (top + h / 2) / height - 1
    return theta


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box, mirror where ``flips``, resize to (size, size).

    images: (B, C, H, W) uint8 or float in [0, 1] -> float32 (B, C, size, size) in [0, 1].
    Boxes of exactly size x size whole pixels need no resampling (``sliced_crop``, the same
    values); any other box goes through ``sampled_crop``.
    """
    if bool((boxes[:, 2:] == size).all() and (boxes[:, :2] == boxes[:, :2].floor()).all()):
        return to_float(sliced_crop(images, boxes, flips, size))
    return sampled_crop(images, boxes, flips, size)


def sliced_crop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of size x size pixels at whole-pixel (top, left), mirrored where ``flips``:
    one gather over the flattened pixels, in the images' dtype (4x faster than indexing
    rows and columns separately). (B, C, H, W) -> (B, C, size, size)."""
    batch, chans, height, width = images.shape
    offsets = torch.arange(size, device=images.device)
    top, left = boxes[:, :2].long().to(images.device).unbind(1)
    flips = flips.to(images.device)[:, None]
    rows = top[:, None] + offsets                                                # (B, size)
    cols = left[:, None] + torch.where(flips, offsets.flip(0), offsets)          # (B, size), reversed if flipped
    pixels = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, size * size)
    crops = images.reshape(batch, chans, height * width).gather(2, pixels.expand(-1, chans, -1))
    return crops.view(batch, chans, size, size)


def sampled_crop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Any boxes: one affine_grid + grid_sample for the batch -> float32 (B, C, size, size).

    Bilinear with half-pixel centers, like F.interpolate(align_corners=False); no
    antialiasing, fine for the small crops of the random resized crop.
    """
    x = to_float(images)
    batch, chans, height, width = x.shape
    theta = crop_theta(boxes, height, width, flips).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [batch, chans, size, size], align_corners=False)  # (B, size, size, 2)
    # 'border': a bilinear tap half a pixel beyond the edge repeats the edge, not black
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(images: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3),
                        hflip: bool = True) -> torch.Tensor:
    """Training transform for a batch of equal-size images: (B, C, H, W) -> float (B, C, size, size)."""
    batch, _, height, width = images.shape
    sizes = torch.tensor([[height, width]]).expand(batch, 2)
    boxes = sample_crop_boxes(sizes, scale, ratio, generator)
    flips = sample_flips(batch, generator) if hflip else torch.zeros(batch, dtype=torch.bool)
    return resized_crop(images, boxes, flips, size)


def center_crop(images: torch.Tensor, size: int, crop_fraction: float = 0.875) -> torch.Tensor:
    """Eval transform: resize the shorter side to floor(size / crop_fraction), center crop size.

    images: (B, C, H, W) uint8 or float -> float32 (B, C, size, size) in [0, 1].
    """
    x = to_float(images)
    height, width = x.shape[-2:]
    new_h, new_w = resized_shape(height, width, size, crop_fraction)
    if (new_h, new_w) != (height, width):
        downscale = new_h < height
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=downscale)
        x = x.clamp_(0, 1)  # bilinear with antialias can overshoot slightly
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return x[..., top:top + size, left:left + size].contiguous()


def resized_shape(height: int, width: int, size: int, crop_fraction: float) -> tuple[int, int]:
    """Image size after the eval resize (shorter side -> floor(size / crop_fraction), like timm)."""
    short = max(size, math.floor(size / crop_fraction + 1e-6))
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass through as float32."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


# --------------------------------------------------------------------------- Pillow, per image

def eval_box(height: int, width: int, size: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The region (top, left, h, w) of the original image that ``center_crop`` keeps."""
    new_h, new_w = resized_shape(height, width, size, crop_fraction)
    sy, sx = height / new_h, width / new_w
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return top * sy, left * sx, size * sy, size * sx


JPEG_SCALES = (8, 4, 2)  # the reductions libjpeg decodes to directly (1/8, 1/4, 1/2)


def jpeg_draft(image: Image.Image, box, size: int) -> tuple[float, float, float, float]:
    """Have a JPEG ``image`` (opened, not yet decoded) decode at the smallest scale at which
    ``box`` (top, left, h, w) still spans ``size`` pixels or more both ways, so the
    resize only ever shrinks. Returns the box in the coordinates of the decoded image:
    ``box`` itself when the image decodes at full size (not a JPEG, or a small box)."""
    top, left, h, w = (float(v) for v in box)
    scale = next((s for s in JPEG_SCALES if min(h, w) >= s * size), 1)
    width = image.width
    # draft picks the largest reduction leaving at least the requested size
    drafted = image.draft("RGB", (width // scale, image.height // scale)) if scale > 1 else None
    if drafted is None:
        return top, left, h, w
    factor = width / drafted[1][2]  # draft's box: where the full image lies in the reduced one
    return top / factor, left / factor, h / factor, w / factor


def pil_resized_crop(image: Image.Image, box, flip: bool, size: int) -> torch.Tensor:
    """One image: crop ``box`` (top, left, h, w), resize to (size, size), maybe mirror.

    Returns uint8 (C, size, size). Pillow's bilinear resize antialiases when shrinking.
    """
    top, left, h, w = (float(v) for v in box)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
