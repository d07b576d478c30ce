"""Batched torch building blocks of the corruptions: filters, colour spaces, noise fields.

Images are float tensors (B, C, H, W) in [0, 1]; single-channel fields are (B, H, W).
Random numbers are drawn from the caller's ``torch.Generator`` on its own device
(CPU unless the caller passes a CUDA generator) and moved to the images' device, so a
seeded generator gives the same corruption on CPU and GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R 601 luma, as cv2.COLOR_RGB2GRAY (the reference's grey conversions)
LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- randomness

def _device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def uniform(shape, low, high, generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=_device(generator, like))
    return (low + (high - low) * u).to(like.device)


def normal(shape, mean, std, generator, like: torch.Tensor) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=_device(generator, like))
    return (mean + std * z).to(like.device)


def poisson(rates: torch.Tensor, generator) -> torch.Tensor:
    device = _device(generator, rates)
    return torch.poisson(rates.to(device), generator=generator).to(rates.device)


def integers(shape, low, high, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform integers in [low, high), like np.random.randint."""
    return torch.randint(low, high, shape, generator=generator, device=_device(generator, like)).to(like.device)


# --------------------------------------------------------------------------- linear filters

def _boundary_index(index: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map out-of-range indices back into [0, n) with scipy's boundary modes."""
    if mode == "nearest":                      # a a a | a b c d | d d d
        return index.clamp(0, n - 1)
    if mode == "reflect":                      # b a | a b c d | d c  (half-sample symmetric)
        period = 2 * n
        m = index.remainder(period)
        return torch.where(m < n, m, period - 1 - m)
    if mode == "mirror":                       # c b | a b c d | c b  (cv2 BORDER_REFLECT_101)
        if n == 1:
            return torch.zeros_like(index)
        period = 2 * n - 2
        m = index.remainder(period)
        return torch.where(m < n, m, period - m)
    raise ValueError(mode)


def filter_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """The (n, n) matrix of a 1-D correlation with ``kernel`` (odd length, centred)
    on a signal of length n, boundary folded in. Folding makes kernels wider than
    the image exact (the ImageNet-C elastic sigma is 170 px on 224 px images)."""
    radius = (kernel.numel() - 1) // 2
    taps = torch.arange(-radius, radius + 1, device=kernel.device)
    sources = _boundary_index(torch.arange(n, device=kernel.device)[:, None] + taps, n, mode)  # (n, taps)
    matrix = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    return matrix.scatter_add_(1, sources, kernel.expand(n, -1).contiguous())


def separable(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate the last two dims of x with ``kernel`` along each (x: (..., H, W))."""
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    rows = filter_matrix(x.shape[-2], kernel, mode)
    cols = filter_matrix(x.shape[-1], kernel, mode)
    return rows @ x @ cols.T


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d's kernel: radius int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian (mode 'nearest', truncate 4 by default) on the last two dims."""
    if sigma <= 0:
        return x
    return separable(x, gaussian_kernel1d(sigma, truncate), mode)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)) with its default border (reflect-101)."""
    return separable(x, torch.full((3,), 1 / 3), "mirror")


def correlate2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D: 2-D correlation of every channel, border reflect-101. x: (B, C, H, W)."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    rows = _boundary_index(torch.arange(-ph, h + ph, device=x.device), h, "mirror")
    cols = _boundary_index(torch.arange(-pw, w + pw, device=x.device), w, "mirror")
    padded = x[:, :, rows][:, :, :, cols]                    # (B, C, H + kh - 1, W + kw - 1)
    weight = kernel.to(x)[None, None].expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


# --------------------------------------------------------------------------- colour

def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """skimage.color.rgb2hsv on (B, 3, H, W); hue in [0, 1), grey pixels get hue 0."""
    r, g, b = rgb.unbind(1)
    value, argmax = rgb.max(1)
    delta = value - rgb.min(1).values
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = delta.clamp_min(1e-12)
    hue = torch.stack([(g - b) / safe, 2 + (b - r) / safe, 4 + (r - g) / safe], 1)
    hue = hue.gather(1, argmax[:, None]).squeeze(1)
    hue = torch.where(delta > 0, (hue / 6).remainder(1.0), torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb on (B, 3, H, W)."""
    h, s, v = hsv.unbind(1)
    sector = torch.floor(h * 6)
    f = h * 6 - sector
    sector = sector.long().remainder(6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    # rows: sector 0..5; columns: r, g, b
    choices = torch.stack([torch.stack(c, 1) for c in
                           [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], 1)  # (B, 6, 3, H, W)
    index = sector[:, None, None].expand(-1, 1, 3, -1, -1)
    return choices.gather(1, index).squeeze(1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W); a single channel is its own luma."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def tint(x: torch.Tensor, layer: torch.Tensor, rgb: tuple) -> torch.Tensor:
    """layer (B, 1, H, W) times an RGB colour, as luma for single-channel images."""
    colour = torch.tensor(rgb, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    coloured = layer * colour
    return coloured if x.shape[1] == 3 else luma(coloured)


# --------------------------------------------------------------------------- geometry

def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by ``factor`` keeping the size (reference ``clipped_zoom``:
    central crop of ceil(side / factor), scipy.ndimage.zoom order 1, centre trim)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (round(ch * factor), round(cw * factor))
    # scipy's zoom maps the corner pixels onto each other: align_corners=True
    zoomed = F.interpolate(crop, size=size, mode="bilinear", align_corners=True)
    th, tw = (size[0] - h) // 2, (size[1] - w) // 2
    return zoomed[..., th:th + h, tw:tw + w]


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' motion blur without ImageMagick: a one-sided Gaussian-weighted
    sum of copies shifted along the angle (one angle per image, (B,) degrees), edges
    replicated (the reference ``shift``)."""
    width = 2 * radius + 1
    weights = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).tolist()
    angle = torch.deg2rad(angle_deg.double().cpu())[:, None]
    steps = torch.arange(width, dtype=torch.float64)[None]
    dys = (-torch.ceil(steps * torch.sin(angle) - 0.5)).long().tolist()   # (B, width)
    dxs = (-torch.ceil(steps * torch.cos(angle) - 0.5)).long().tolist()
    h, w = x.shape[-2:]
    pad = width
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = torch.zeros_like(x)
    # one slice per image and step: on CPU much faster than gathers with per-image offsets
    for b in range(x.shape[0]):
        for weight, dy, dx in zip(weights, dys[b], dxs[b]):
            if abs(dy) >= h or abs(dx) >= w:      # the reference stops once motion leaves the image
                break
            out[b] += weight * padded[b, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    return out


# --------------------------------------------------------------------------- noise fields

def plasma_fractal(batch: int, mapsize: int, decay: float, generator, like: torch.Tensor) -> torch.Tensor:
    """Diamond-square height maps (B, mapsize, mapsize) in [0, 1] (reference
    ``plasma_fractal``, vectorised over the batch); mapsize is a power of two."""
    maps = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64, device=like.device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * uniform(total.shape, -wibble, wibble, generator, like).double()

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres = maps[:, half::step, half::step]
        corners = maps[:, 0::step, 0::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    low = maps.amin((1, 2), keepdim=True)
    high = maps.amax((1, 2), keepdim=True)
    return ((maps - low) / (high - low)).to(like.dtype)


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


# --------------------------------------------------------------------------- morphology

def edge_distance(edges: torch.Tensor, limit: int) -> torch.Tensor:
    """Euclidean distance (B, H, W) to the nearest True pixel of ``edges``, capped at
    ``limit`` (cv2.distanceTransform + THRESH_TRUNC). Exact within the cap: a 1-D
    pass per axis over offsets up to ``limit``."""
    big = float(limit * limit + 1)
    h, w = edges.shape[-2:]
    best = torch.where(edges, 0.0, big)
    column = best.clone()
    for d in range(1, min(limit, h - 1) + 1):
        column[:, d:] = torch.minimum(column[:, d:], best[:, :-d] + d * d)
        column[:, :-d] = torch.minimum(column[:, :-d], best[:, d:] + d * d)
    total = column.clone()
    for d in range(1, min(limit, w - 1) + 1):
        total[:, :, d:] = torch.minimum(total[:, :, d:], column[:, :, :-d] + d * d)
        total[:, :, :-d] = torch.minimum(total[:, :, :-d], column[:, :, d:] + d * d)
    return total.sqrt().clamp_max(limit)


def equalize_hist(levels: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per image on integer levels 0..255 (B, H, W) -> float levels."""
    b = levels.shape[0]
    flat = levels.reshape(b, -1).long()
    hist = torch.zeros(b, 256, device=levels.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(1)
    first = hist.gt(0).float().argmax(1, keepdim=True)
    cdf_min = hist.gather(1, first)
    scale = 255.0 / (flat.shape[1] - cdf_min).clamp_min(1)
    lut = ((cdf - cdf_min) * scale).round().clamp(0, 255)
    return lut.gather(1, flat).reshape(levels.shape)
