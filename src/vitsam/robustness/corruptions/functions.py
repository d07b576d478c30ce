"""The 19 corruptions of ImageNet-C / CIFAR-10-C as batched torch functions.

Each function takes float images (B, C, H, W) in [0, 1] (C = 1 or 3; never modified),
the severity's entry of a parameter table (``params.py``), ``scale`` = image side / the
table's reference side (lengths in pixels are multiplied by it), a torch.Generator and
the table's name, and returns new images of the same shape (the caller clamps to
[0, 1]). Randomness is drawn per image. References: the original ImageNet-C code
(hendrycks/robustness, ``ImageNet-C/create_c/make_imagenet_c.py``) and imagecorruptions
1.1.2 (its packaging); each docstring names where it departs from them.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from vitsam.robustness.corruptions import ops
from vitsam.robustness.corruptions.frost import frost_layers


# --------------------------------------------------------------------------- noise

def gaussian_noise(x, c, scale, g, table):
    return torch.add(x, ops.normal(x.shape, 0, 1, g, x), alpha=c)


def shot_noise(x, c, scale, g, table):
    return ops.poisson(x.mul(c).clamp_(min=0), g).div_(c)


def impulse_noise(x, c, scale, g, table):
    """skimage random_noise 's&p': each value (per channel) flips with probability c,
    to 1 or 0 with equal odds: one uniform decides both (below c / 2: 1, below c: 0)."""
    u = ops.uniform(x.shape, 0, 1, g, x)
    return torch.where(u < c, (u < c / 2).to(x.dtype), x)


def speckle_noise(x, c, scale, g, table):
    return torch.addcmul(x, x, ops.normal(x.shape, 0, 1, g, x), value=c)     # x + x * N(0, c)


# --------------------------------------------------------------------------- blur

def gaussian_blur(x, c, scale, g, table):
    return ops.gaussian_blur(x, c * scale)


def glass_blur(x, c, scale, g, table):
    """Blur, store as 8 bits (truncating, as the reference's np.uint8), shuffle pixels
    locally ``c[2]`` times with offsets in [-delta, delta) (``ops.glass_shuffle``, the
    reference's sequential copy sweep computed exactly), blur again."""
    sigma, delta, passes = c[0] * scale, max(1, round(c[1] * scale)), c[2]
    b, _, h, w = x.shape
    x = ops.gaussian_blur(x, sigma).clamp(0, 1).mul_(255).floor_().div_(255)
    for _ in range(passes):
        dy, dx = ops.integers((2, b, h, w), -delta, delta, g, x)
        x = ops.glass_shuffle(x, dy, dx, delta)
    return ops.gaussian_blur(x, sigma)


@functools.lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference ``disk``: an aliased disk, normalised, then cv2.GaussianBlur
    (3x3, or 5x5 past radius 8) to antialias; trimmed to its non-zero support."""
    half = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    gauss = torch.exp(-(torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2) ** 2 / (2 * alias_blur ** 2))
    kernel = ops.separable(disk, gauss / gauss.sum(), "mirror")
    support = kernel.abs().sum(0) > 0
    keep = torch.nonzero(support).squeeze(1)
    lo, hi = int(keep.min()), int(keep.max())
    lo, hi = min(lo, 2 * half - hi), max(hi, 2 * half - lo)       # stay centred
    return kernel[lo:hi + 1, lo:hi + 1].float()


def defocus_blur(x, c, scale, g, table):
    kernel = disk_kernel(c[0] * scale, c[1])
    if kernel.shape[0] > min(x.shape[-2:]):          # reflect padding needs a smaller kernel
        r = (min(x.shape[-2:]) - 1) // 2
        mid = kernel.shape[0] // 2
        kernel = kernel[mid - r:mid + r + 1, mid - r:mid + r + 1]
        kernel = kernel / kernel.sum()
    return ops.correlate2d(x, kernel)


def motion_blur(x, c, scale, g, table):
    """imagecorruptions' own motion blur (no ImageMagick), angle in [-45, 45] degrees."""
    radius, sigma = max(1, round(c[0] * scale)), c[1] * scale
    angle = ops.uniform((x.shape[0],), -45, 45, g, x)
    return ops.motion_blur(x, radius, sigma, angle)


def zoom_blur(x, c, scale, g, table):
    """The mean of the image and its central zooms by each factor of c."""
    return ops.zoom_sum(x, [float(f) for f in c]).add_(x).div_(len(c) + 1)


# --------------------------------------------------------------------------- weather

def snow(x, c, scale, g, table):
    b, _, h, w = x.shape
    layer = ops.clipped_zoom(ops.normal((b, 1, h, w), c[0], c[1], g, x), c[2])
    layer = torch.where(layer < c[3], 0.0, layer).clamp_(0, 1)
    angle = ops.uniform((b,), -135, -45, g, x)
    layer = ops.motion_blur(layer, max(1, round(c[4] * scale)), c[5] * scale, angle)
    layer = layer.mul_(255).round_().div_(255)       # the reference rounds the layer to uint8
    out = torch.maximum(x, ops.luma(x).mul(1.5).add_(0.5)).mul_(1 - c[6]).add_(x, alpha=c[6])
    return out.add_(layer).add_(layer.flip(-2, -1))  # np.rot90(k=2) is a flip of both axes


def frost(x, c, scale, g, table):
    """c[0] * image + c[1] * a random crop of a frost photograph (``frost.py``: the
    reference's photographs when installed, procedural stand-ins otherwise)."""
    b, _, h, w = x.shape
    layer = frost_layers(b, h, w, table, g, x)
    if x.shape[1] == 1:
        layer = ops.luma(layer)
    return layer.mul_(c[1]).add_(x, alpha=c[0])


def fog(x, c, scale, g, table):
    b, _, h, w = x.shape
    size = ops.next_power_of_two(max(h, w))
    haze = ops.plasma_fractal(b, size, c[1], g, x)[:, None, :h, :w]
    max_val = x.amax((1, 2, 3), keepdim=True)
    return (x + c[0] * haze).mul_(max_val / (max_val + c[0]))


def spatter(x, c, scale, g, table):
    """Water drops (severities with mode 0) or mud (mode 1).

    The water branch follows the reference's OpenCV pipeline with torch stand-ins:
    Canny edges of the thresholded liquid layer are taken as the layer's inner
    boundary (inside the drops the smoothed noise is far below Canny's thresholds),
    the distance transform is exact Euclidean (cv2 uses a 5x5 chamfer mask)."""
    b, _, h, w = x.shape
    liquid = ops.gaussian_blur(ops.normal((b, h, w), c[0], c[1], g, x), c[2] * scale)
    liquid = torch.where(liquid < c[3], 0.0, liquid)
    if c[5] == 0:
        levels = liquid.mul(255).floor_().clamp_(0, 255)             # uint8 cast
        mask = levels > 0
        padded = torch.nn.functional.pad(mask[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
        neighbours_out = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]) < 4
        edges = mask & neighbours_out
        dist = ops.edge_distance(edges, 20)
        dist = torch.floor(ops.box_blur3(dist))
        dist = ops.equalize_hist(dist)
        emboss = torch.tensor([[-2., -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = ops.correlate2d(dist[:, None], emboss).round_().clamp_(0, 255)[:, 0]
        dist = ops.box_blur3(dist)
        m = levels.mul_(dist)
        m = m.div_(m.amax((1, 2), keepdim=True).clamp_min(1e-6)).mul_(c[4])
        return ops.tint(x, m[:, None], (175 / 255, 238 / 255, 238 / 255)).add_(x)   # pale turquoise
    m = ops.gaussian_blur((liquid > c[3]).to(x.dtype), c[4] * scale)
    m = torch.where(m < 0.8, 0.0, m)[:, None]
    return ops.tint(x, m, (63 / 255, 42 / 255, 20 / 255)).add_(x * (1 - m))          # mud brown


# --------------------------------------------------------------------------- digital

def contrast(x, c, scale, g, table):
    means = x.mean((2, 3), keepdim=True)
    return (x - means).mul_(c).add_(means)


def brightness(x, c, scale, g, table):
    """skimage's HSV round trip with V raised by c, in closed form: with hue and
    saturation fixed every channel is proportional to V = max channel, so the image is
    scaled by min(V + c, 1) / V; black pixels (V = 0, hue and saturation 0) become grey
    at level c. Grey images: V is the pixel, so this adds c."""
    value = x.amax(1, keepdim=True)
    brighter = (value + c).clamp_(max=1)
    ratio = brighter / value.clamp_min(1e-12)
    return torch.where(value > 0, x * ratio, brighter.expand_as(x))


def saturate(x, c, scale, g, table):
    """skimage's HSV round trip with S set to clip(S * c[0] + c[1], 0, 1), in closed
    form: with hue and V fixed, V - channel is proportional to S, so it is scaled by
    S' / S. Grey pixels (S = 0) have hue 0 in skimage and turn towards red: red stays V,
    green and blue become V (1 - S'). Grey images go through RGB and keep the red
    channel, as in imagecorruptions: they stay unchanged."""
    if x.shape[1] == 1:
        return x.clone()
    value = x.amax(1, keepdim=True)
    delta = value - x.amin(1, keepdim=True)
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), 0.0)
    new = saturation.mul(c[0]).add_(c[1]).clamp_(0, 1)
    coloured = value - (value - x) * (new / saturation.clamp_min(1e-12))
    grey = torch.cat([value, value * (1 - new), value * (1 - new)], 1)
    return torch.where(delta > 0, coloured, grey)


def jpeg_compression(x, c, scale, g, table):
    """Real JPEG: each image is rounded to 8 bits, encoded by Pillow at quality c and
    decoded (grey images as one-component JPEGs)."""
    return ops.from_levels(ops.jpeg_round_trip(ops.to_levels(x), c), x)


@functools.lru_cache(maxsize=32)
def _box_spans(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's BOX resampling along one axis: output pixel i averages the ``count[i]``
    input pixels from ``start[i]`` on. Pillow's ``precompute_coeffs`` in float64, step by
    step (boundary ties are decided by its rounding): the box filter is 1 on (-1/2, 1/2]
    of (pixel - centre + 1/2) / max(scale, 1), over the pixels from
    int(centre - support + 1/2) to int(centre + support + 1/2). Upsampling copies one pixel."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale                  # (n_out,)
    pixel = torch.arange(n_in, dtype=torch.float64)
    t = (pixel[None, :] - centre[:, None] + 0.5) * (1.0 / filterscale)                  # (n_out, n_in)
    first = (centre - support + 0.5).trunc().clamp_min(0)[:, None]
    last = (centre + support + 0.5).trunc().clamp_max(n_in)[:, None]
    inside = (t > -0.5) & (t <= 0.5) & (pixel >= first) & (pixel < last)
    return inside.double().argmax(1), inside.sum(1)


@functools.lru_cache(maxsize=32)
def _box_members(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_in, n_out) 0/1 matrix of which input pixels each output pixel averages, and
    the counts (n_out,)."""
    start, count = _box_spans(n_in, n_out)
    pixel = torch.arange(n_in)[:, None]
    return ((pixel >= start) & (pixel < start + count)).float(), count.float()


def _box_down(levels: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """BOX downsampling of 8-bit levels (integers as floats) along dim (-1 or -2), rounded
    to 8 bits as PIL does after each pass (round half up). The sums are a product with
    the 0/1 membership matrix: exact, integers far below 2^24."""
    members, count = (t.to(levels.device) for t in _box_members(levels.shape[dim], size))
    if dim == -1:
        total = levels @ members
    else:
        total, count = members.T @ levels, count[:, None]
    return total.mul_(2).add_(count).div_(count * 2).floor_()


def _box_up(levels: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """BOX upsampling along dim: each output pixel copies the input pixel whose box holds it."""
    start, _ = _box_spans(levels.shape[dim], size)
    return levels.index_select(dim, start.to(levels.device))


def pixelate(x, c, scale, g, table):
    """ImageNet-C's pixelate on 8-bit levels, as PIL does it: BOX-downsample to
    int(side * c), horizontal pass then vertical, each rounded to 8 bits; BOX-upsample
    back (each pixel copies one). imagecorruptions 1.1.2 upsamples with NEAREST, which
    picks the same pixel except at exact ties."""
    h, w = x.shape[-2:]
    levels = x.mul(255).round_().clamp_(0, 255)
    small = _box_down(_box_down(levels, max(1, int(w * c)), -1), max(1, int(h * c)), -2)
    return _box_up(_box_up(small, w, -1), h, -2).div_(255)


def elastic_transform(x, c, scale, g, table):
    """ImageNet-C's elastic transform: a random affine warp (cv2.warpAffine, bilinear,
    border reflect-101) then a smooth random displacement field sampled bilinearly
    with half-sample reflection (scipy map_coordinates order 1, mode 'reflect')."""
    alpha, sigma, jitter = (v * scale for v in c)
    b, _, h, w = x.shape
    # the three affine anchor points and their jittered targets (x, y) in pixels
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    side = min(h, w) // 3
    src = torch.stack([centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side])
    dst = src + ops.uniform((b, 3, 2), -jitter, jitter, g, x).double().cpu()
    grid = F.affine_grid(_normalised_affine(_affine_from_points(dst, src), h, w).to(x), [b, 1, h, w],
                         align_corners=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    fields = ops.gaussian_blur(ops.uniform((b, 2, h, w), -1, 1, g, x), sigma, mode="reflect", truncate=3)
    # pixel (column + dx, row + dy) in grid_sample's coordinates without aligned corners: (2 p + 1) / size - 1
    columns = torch.arange(w, dtype=x.dtype, device=x.device).mul_(2 / w).add_(1 / w - 1)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).mul_(2 / h).add_(1 / h - 1)[:, None]
    grid = torch.stack([torch.add(columns, fields[:, 0], alpha=2 * alpha / w),
                        torch.add(rows, fields[:, 1], alpha=2 * alpha / h)], -1)     # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _affine_from_points(out_pts: torch.Tensor, in_pts: torch.Tensor) -> torch.Tensor:
    """The affine maps (B, 2, 3) sending out_pts[b] (B, 3, 2) to in_pts (3, 2): the
    inverse of cv2.getAffineTransform(in_pts, out_pts), which warpAffine applies."""
    b = out_pts.shape[0]
    design = torch.cat([out_pts, torch.ones(b, 3, 1, dtype=out_pts.dtype)], 2)   # (B, 3, 3)
    solution = torch.linalg.solve(design, in_pts.expand(b, 3, 2))              # (B, 3, 2)
    return solution.transpose(1, 2)


def _normalised_affine(affine: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A pixel-coordinate affine map (B, 2, 3) in grid_sample's aligned-corner coordinates
    (pixel p = n * (size - 1) / 2 + (size - 1) / 2): theta = D^-1 A D, offset
    D^-1 (A t + a - t), with D the scale and t the shift."""
    half = torch.tensor([max(w - 1, 1) / 2, max(h - 1, 1) / 2], dtype=affine.dtype)
    linear, shift = affine[:, :, :2], affine[:, :, 2]
    theta_linear = linear * half[None, None, :] / half[None, :, None]
    theta_shift = ((linear @ half) + shift - half) / half
    return torch.cat([theta_linear, theta_shift[:, :, None]], 2)


FUNCTIONS = {f.__name__: f for f in [
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression,
    speckle_noise, gaussian_blur, spatter, saturate]}
