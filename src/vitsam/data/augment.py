"""Strong augmentation on batched tensors, the paper's "AUG" baseline of its "SAM vs. strong
augmentations" table: RandAugment (Cubuk et al. 2020) then mixup (Zhang et al. 2018).
No torchvision: every operation works on a float batch (B, C, H, W) in [0, 1], on any
device, with all randomness drawn from one explicit CPU ``torch.Generator``.

RandAugment follows the TensorFlow implementation big_vision uses for its ViT recipes
(``big_vision/pp/autoaugment.py``, ``distort_image_with_randaugment``; AugReg, Steiner et
al. 2021): each of ``layers`` rounds picks one of 16 operations uniformly per image and
always applies it at the fixed magnitude M on a 0..10 level scale (M may exceed 10:
AugReg's ViT-B/16 uses 15). Level -> argument as there:

- rotate: M/10 * 30 degrees; shear: M/10 * 0.3; translate: M/10 * 100/224 of the image
  side; each with a random sign; nearest-neighbour resampling, empty pixels gray (128);
- color / contrast / brightness / sharpness: blend factor M/10 * 1.8 + 0.1 (PIL's
  ImageEnhance semantics: 1 is the identity, 0 the degenerate image);
- posterize: keep int(M/10 * 4) bits; solarize: invert pixels >= int(M/10 * 256)
  (so at M >= 10 solarize is the identity, as in the reference); solarize_add: add
  int(M/10 * 110) to pixels below 128; cutout: a gray square of side 2 * int(M/10 * 40/224
  of the image side) at a uniform centre;
- auto_contrast, equalize, invert: no argument.

One deliberate difference: ``contrast`` blends towards the image's mean gray level, as PIL
does; the TF port blends towards (number of pixels / 256), a known slip.

Mixup follows big_vision's ``utils.mixup``: one weight per batch, lam ~ Beta(alpha, alpha)
taken as max(lam, 1 - lam) (the larger weight on the image itself), each image mixed with
its neighbour in the batch (a roll by one), labels as one-hot vectors mixed alike.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vitsam.errors import VitsamError

MAX_LEVEL = 10.0          # the reference's level scale
FILL = 128 / 255          # gray for pixels a geometric op or cutout leaves empty
TRANSLATE_FRACTION = 100 / 224   # the reference's translate_const (100 px) for 224 px images
CUTOUT_FRACTION = 40 / 224       # the reference's cutout_const (40 px) for 224 px images
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)   # tf.image.rgb_to_grayscale


class Draws(NamedTuple):
    """Per-image random draws of one RandAugment round (all (b,) or (b, 2), on the images' device)."""
    sign: torch.Tensor      # +1 / -1 for the signed operations
    center: torch.Tensor    # cutout centre (row, column) as fractions of the image in [0, 1)


# --------------------------------------------------------------------------- helpers

def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's Image.blend: degenerate + factor * (images - degenerate), clipped to [0, 1]."""
    return (degenerate + factor * (images - degenerate)).clamp(0, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(b, C, H, W) -> (b, 1, H, W) luma; a one-channel image is its own gray."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> integer gray levels 0..255 (int64)."""
    return (images * 255).round().clamp(0, 255).long()


def pixel_to_normalized(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(3, 3) map from affine_grid's normalized coordinates (align_corners=False) to pixel
    coordinates with pixel centres at integers: x = (u + 1) W / 2 - 1/2."""
    return like.new_tensor([[width / 2, 0, width / 2 - 0.5], [0, height / 2, height / 2 - 0.5], [0, 0, 1]])


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply per-image pixel-space affine maps, as TF's ``contrib_image.transform`` does:
    ``matrices`` (b, 2, 3) send an OUTPUT pixel (x, y, 1) to the INPUT pixel it samples.
    Nearest neighbour; pixels sampled from outside the image are gray (the reference's
    ``wrap`` / ``unwrap``: an extra all-ones channel marks what was inside)."""
    b, c, h, w = images.shape
    to_pixels = pixel_to_normalized(h, w, images)                              # (3, 3)
    full = torch.cat([matrices, images.new_tensor([0, 0, 1]).expand(b, 1, 3)], dim=1)  # (b, 3, 3)
    theta = (torch.linalg.inv(to_pixels) @ full @ to_pixels)[:, :2]            # normalized, (b, 2, 3)
    grid = F.affine_grid(theta, [b, c + 1, h, w], align_corners=False)
    wrapped = torch.cat([images, torch.ones_like(images[:, :1])], dim=1)       # (b, C + 1, H, W)
    out = F.grid_sample(wrapped, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = out[:, -1:] > 0.5
    return torch.where(inside, out[:, :-1], torch.full_like(out[:, :-1], FILL))


def _matrices(rows: list[list], like: torch.Tensor) -> torch.Tensor:
    """Nested [[a, b, c], [d, e, f]] lists of (b,) tensors or floats -> (b, 2, 3)."""
    b = like.shape[0]
    entries = [torch.as_tensor(v, dtype=like.dtype, device=like.device).expand(b) for row in rows for v in row]
    return torch.stack(entries, dim=1).view(b, 2, 3)


# --------------------------------------------------------------------------- operations
# Each takes (images (b, C, H, W) in [0, 1], magnitude M, draws) -> images in [0, 1].

def auto_contrast(x: torch.Tensor, m: float = 0.0, draws: Draws | None = None) -> torch.Tensor:
    """Stretch each channel of each image to the full range (unchanged where it is flat)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    stretched = (x - lo) / (hi - lo).clamp_min(1e-12)
    return torch.where(hi > lo, stretched, x).clamp(0, 1)


def equalize(x: torch.Tensor, m: float = 0.0, draws: Draws | None = None) -> torch.Tensor:
    """PIL's histogram equalization per channel: lut = (cumsum(hist) + step // 2) // step
    shifted by one bin, step = (pixels - count of the last occupied level) // 255; a
    channel with step 0 is left as it is."""
    b, c, h, w = x.shape
    levels = to_levels(x).view(b, c, h * w)
    hist = torch.zeros(b, c, 256, dtype=torch.long, device=x.device).scatter_add_(2, levels, torch.ones_like(levels))
    last = hist.gather(2, levels.amax(dim=2, keepdim=True))                     # (b, c, 1)
    step = (h * w - last) // 255
    lut = (hist.cumsum(dim=2) + step // 2) // step.clamp_min(1)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut[..., :-1]], dim=2).clamp(0, 255)
    mapped = lut.gather(2, levels).view(b, c, h, w).to(x.dtype) / 255
    return torch.where((step > 0).view(b, c, 1, 1), mapped, x)


def invert(x: torch.Tensor, m: float = 0.0, draws: Draws | None = None) -> torch.Tensor:
    return 1 - x


def rotate_degrees(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``degrees`` (b,) about its centre."""
    h, w = x.shape[-2:]
    radians = degrees.to(x) * math.pi / 180
    cos, sin = torch.cos(radians), torch.sin(radians)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # output (x, y) samples input R (x - cx, y - cy) + (cx, cy)
    return warp(x, _matrices([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]], x))


def rotate(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    return rotate_degrees(x, draws.sign * (m / MAX_LEVEL * 30))


def posterize_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top ``bits`` bits of each 8-bit level."""
    shift = 8 - min(max(bits, 0), 8)
    return ((to_levels(x) >> shift) << shift).to(x.dtype) / 255


def posterize(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    return posterize_bits(x, int(m / MAX_LEVEL * 4))


def solarize_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (on the 0..255 scale)."""
    return torch.where(x * 255 < threshold, x, 1 - x)


def solarize(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    return solarize_threshold(x, int(m / MAX_LEVEL * 256))


def solarize_add(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    """Add int(M/10 * 110) levels to the pixels below 128."""
    added = (x + int(m / MAX_LEVEL * 110) / 255).clamp(0, 1)
    return torch.where(x * 255 < 128, added, x)


def enhance_factor(m: float) -> float:
    return m / MAX_LEVEL * 1.8 + 0.1


def color(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    """Saturation: blend with the gray image (the identity on one-channel images)."""
    return blend(grayscale(x).expand_as(x), x, enhance_factor(m))


def contrast_factor(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with a flat image at the mean gray level (PIL's ImageEnhance.Contrast)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(mean.expand_as(x), x, factor)


def contrast(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    return contrast_factor(x, enhance_factor(m))


def brightness(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    return blend(torch.zeros_like(x), x, enhance_factor(m))


def sharpness_factor(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, border
    pixels kept) (PIL's ImageEnhance.Sharpness)."""
    c = x.shape[1]
    kernel = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]).div(13).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)                   # 'valid': (H - 2, W - 2)
    return blend(smooth, x, factor)


def sharpness(x: torch.Tensor, m: float, draws: Draws | None = None) -> torch.Tensor:
    return sharpness_factor(x, enhance_factor(m))


def shear_x(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    s = draws.sign * (m / MAX_LEVEL * 0.3)
    return warp(x, _matrices([[1.0, s, 0.0], [0.0, 1.0, 0.0]], x))          # input (x + s y, y)


def shear_y(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    s = draws.sign * (m / MAX_LEVEL * 0.3)
    return warp(x, _matrices([[1.0, 0.0, 0.0], [s, 1.0, 0.0]], x))          # input (x, s x + y)


def translate_pixels(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move each image by (-dx, -dy) pixels: output (x, y) samples input (x + dx, y + dy)."""
    return warp(x, _matrices([[1.0, 0.0, dx], [0.0, 1.0, dy]], x))


def translate_x(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    return translate_pixels(x, draws.sign * (m / MAX_LEVEL * TRANSLATE_FRACTION * x.shape[-1]), 0.0)


def translate_y(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    return translate_pixels(x, 0.0, draws.sign * (m / MAX_LEVEL * TRANSLATE_FRACTION * x.shape[-2]))


def cutout_square(x: torch.Tensor, center: torch.Tensor, half: int) -> torch.Tensor:
    """Gray out rows cy - half .. cy + half - 1 and the same columns around each centre
    (b, 2) given in whole pixels (clipped at the borders, as the reference)."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    cy, cx = center[:, 0].view(-1, 1, 1), center[:, 1].view(-1, 1, 1)
    inside = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, FILL), x)


def cutout(x: torch.Tensor, m: float, draws: Draws) -> torch.Tensor:
    h, w = x.shape[-2:]
    half = int(m / MAX_LEVEL * CUTOUT_FRACTION * min(h, w))
    center = (draws.center * draws.center.new_tensor([h, w])).floor().long()
    return cutout_square(x, center, half)


Operation = Callable[[torch.Tensor, float, Draws], torch.Tensor]

# The reference's list, in its order (the order matters only for which index draws which op).
OPERATIONS: dict[str, Operation] = {
    "auto_contrast": auto_contrast, "equalize": equalize, "invert": invert, "rotate": rotate,
    "posterize": posterize, "solarize": solarize, "color": color, "contrast": contrast,
    "brightness": brightness, "sharpness": sharpness, "shear_x": shear_x, "shear_y": shear_y,
    "translate_x": translate_x, "translate_y": translate_y, "cutout": cutout, "solarize_add": solarize_add,
}


# --------------------------------------------------------------------------- RandAugment and mixup

def rand_augment(images: torch.Tensor, layers: int, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """RandAugment(N=layers, M=magnitude) on a batch (B, C, H, W) in [0, 1]: per image and
    round, one operation drawn uniformly and applied at magnitude M (module docstring).
    The draws depend only on ``generator`` and the batch size, not on the device."""
    if layers < 0 or magnitude < 0:
        raise VitsamError(f"RandAugment needs layers >= 0 and magnitude >= 0, got {layers} and {magnitude}")
    names = list(OPERATIONS)
    x = images
    for _ in range(layers):
        batch = len(x)
        chosen = torch.randint(len(names), (batch,), generator=generator)
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        center = torch.rand(batch, 2, generator=generator)
        chosen, sign, center = (t.to(x.device) for t in (chosen, sign, center))
        out = x.clone()
        for index, name in enumerate(names):
            picked = (chosen == index).nonzero().flatten()
            if len(picked):
                out[picked] = OPERATIONS[name](x[picked], magnitude, Draws(sign[picked], center[picked]))
        x = out
    return x


def beta_weight(alpha: float, generator: torch.Generator) -> float:
    """lam ~ Beta(alpha, alpha), returned as max(lam, 1 - lam). torch's Beta takes no
    generator, so numpy draws it from a seed that ``generator`` draws."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, C, H, W), int labels (B,)) -> (mixed images, soft targets (B, K)):
    x_i <- lam x_i + (1 - lam) x_{i-1}, the same for one-hot labels; one lam per batch."""
    if alpha <= 0:
        raise VitsamError(f"mixup needs alpha > 0, got {alpha}")
    lam = beta_weight(alpha, generator)
    targets = F.one_hot(labels, num_classes).to(images.dtype)
    return (lam * images + (1 - lam) * images.roll(1, dims=0),
            lam * targets + (1 - lam) * targets.roll(1, dims=0))


class StrongAugment:
    """The configured AUG: RandAugment, then mixup; ``(images, labels, generator) ->
    (images, targets)`` with int64 targets (B,) without mixup, soft targets (B, K) with."""

    def __init__(self, layers: int, magnitude: float, mixup_alpha: float, num_classes: int):
        if layers < 0 or magnitude < 0 or mixup_alpha < 0:
            raise VitsamError(f"augment.randaugment_layers, augment.randaugment_magnitude and augment.mixup_alpha "
                              f"must be >= 0, got {layers}, {magnitude}, {mixup_alpha}")
        self.layers, self.magnitude, self.mixup_alpha = layers, magnitude, mixup_alpha
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, augment, num_classes: int) -> "StrongAugment | None":
        """From an ``AugmentConfig``; None when it asks for nothing."""
        if augment.randaugment_layers == 0 and augment.mixup_alpha == 0:
            return None
        return cls(augment.randaugment_layers, augment.randaugment_magnitude, augment.mixup_alpha, num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layers:
            images = rand_augment(images, self.layers, self.magnitude, generator)
        if self.mixup_alpha:
            return mixup(images, labels, self.num_classes, self.mixup_alpha, generator)
        return images, labels


# --------------------------------------------------------------------------- contrastive views

BLUR_SIGMA = (0.1, 2.0)      # MoCo v3's Gaussian blur sigma range, for 224 px images
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (b, C, H, W) with its own sigma (b,) in pixels: a separable kernel
    of radius ceil(3 * max sigma) (at most the image side - 1), reflected borders."""
    b, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), min(h, w) - 1))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma.to(x).view(-1, 1) ** 2))     # (b, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (b * C, k)
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)          # along H
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)          # along W
    return flat.view(b, c, h, w)


def _where(mask: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, x)


def color_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors ~ U(1 - s, 1 + s) per image (torchvision's
    ColorJitter(0.4, 0.4, 0.2), in a fixed order; MoCo v3's hue jitter of 0.1 is left out)."""
    factors = {name: 1 + s * (2 * torch.rand(len(x), generator=generator) - 1) for name, s in JITTER.items()}
    f = {name: v.to(x).view(-1, 1, 1, 1) for name, v in factors.items()}
    x = blend(torch.zeros_like(x), x, f["brightness"])
    x = contrast_factor(x, f["contrast"])
    return blend(grayscale(x).expand_as(x), x, f["saturation"])


def contrastive_view(images: torch.Tensor, generator: torch.Generator, crop_scale: tuple = (0.08, 1.0),
                     blur_prob: float = 1.0, solarize_prob: float = 0.0) -> torch.Tensor:
    """One MoCo v3 view of each image (Chen, Xie, He 2021; their ``main_moco.py``): random
    resized crop (``crop_scale``) and flip, color jitter with probability 0.8, grayscale
    with 0.2, Gaussian blur (sigma 0.1..2 at 224 px, scaled to the image side) with
    ``blur_prob``, solarize (threshold 128) with ``solarize_prob``. MoCo v3's first view:
    blur 1.0, solarize 0; the second: blur 0.1, solarize 0.2."""
    from vitsam.data.transforms import random_resized_crop

    b, _, h, w = images.shape
    x = random_resized_crop(images, h, generator, crop_scale, (3 / 4, 4 / 3), hflip=True).to(images.dtype)
    draws = (torch.rand(b, generator=generator) < p for p in (0.8, 0.2, blur_prob, solarize_prob))
    jitter, gray, blur, solarized = (d.to(images.device) for d in draws)
    x = _where(jitter, color_jitter(x, generator), x)
    x = _where(gray, grayscale(x).expand_as(x), x)
    sigma = (BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(b, generator=generator)) * min(h, w) / 224
    x = _where(blur, gaussian_blur(x, sigma), x)
    return _where(solarized, solarize_threshold(x, 128), x)
