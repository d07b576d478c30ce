"""Batched torch building blocks of the corruptions: filters, resampling, noise fields.

Images are float tensors (B, C, H, W) in [0, 1]; single-channel fields are (B, H, W).
Random numbers are drawn from the caller's ``torch.Generator`` on its own device
(CPU unless the caller passes a CUDA generator) and moved to the images' device, so a
seeded generator gives the same corruption on CPU and GPU.

Speed (CPU): separable kernels run as block-Toeplitz products over padded windows
(``correlate1d``; a dense (n, n) product only for images up to 32 px or kernels wider than
half the image), wide 2-D kernels through the FFT (``correlate2d``).
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ITU-R 601 luma, as cv2.COLOR_RGB2GRAY (the reference's grey conversions)
LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- randomness

def _device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def uniform(shape, low, high, generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=_device(generator, like))
    if (low, high) != (0, 1):
        u.mul_(high - low).add_(low)
    return u.to(like.device)


def normal(shape, mean, std, generator, like: torch.Tensor) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=_device(generator, like))
    if (mean, std) != (0, 1):
        z.mul_(std).add_(mean)
    return z.to(like.device)


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


def pad(x: torch.Tensor, before: int, after: int, dim: int, mode: str) -> torch.Tensor:
    """x extended along ``dim`` with scipy's boundary mode: slices and a concatenation
    where the pads are shorter than the axis, an index gather otherwise."""
    n = x.shape[dim]
    if max(before, after) < n - 1:
        edge = {"nearest": (0, 1, n - 1, n), "reflect": (0, before, n - after, n),
                "mirror": (1, before + 1, n - 1 - after, n - 1)}[mode]
        left, right = x.narrow(dim, edge[0], edge[1] - edge[0]), x.narrow(dim, edge[2], edge[3] - edge[2])
        if mode == "nearest":
            size = list(x.shape)
            left = left.expand(*size[:dim % x.ndim], before, *size[dim % x.ndim + 1:])
            right = right.expand(*size[:dim % x.ndim], after, *size[dim % x.ndim + 1:])
        else:
            left, right = left.flip(dim), right.flip(dim)
        return torch.cat([left, x, right], dim)
    index = _boundary_index(torch.arange(-before, n + after, device=x.device), n, mode)
    return x.index_select(dim, index)


def filter_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """The (n, n) matrix of a 1-D correlation with ``kernel`` (odd length, centred)
    on a signal of length n, boundary folded in. Folding makes kernels wider than
    the image exact (the ImageNet-C elastic sigma is 170 px on 224 px images)."""
    radius = (kernel.numel() - 1) // 2
    taps = torch.arange(-radius, radius + 1, device=kernel.device)
    sources = _boundary_index(torch.arange(n, device=kernel.device)[:, None] + taps, n, mode)  # (n, taps)
    matrix = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    return matrix.scatter_add_(1, sources, kernel.expand(n, -1).contiguous())


@functools.lru_cache(maxsize=32)
def _dense_filter(n: int, taps: tuple, mode: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return filter_matrix(n, torch.tensor(taps, dtype=dtype, device=device), mode)


BLOCK = 16   # outputs per window of the block-Toeplitz product: (BLOCK + 2r) multiply-adds per output


@functools.lru_cache(maxsize=64)
def _toeplitz(taps: tuple, block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(block + 2r, block) matrix T with T[j + t, j] = kernel[t]: one window times T is
    ``block`` correlation outputs."""
    kernel = torch.tensor(taps, dtype=dtype, device=device)
    width = kernel.numel()
    rows = torch.arange(block, device=device)[None] + torch.arange(width, device=device)[:, None]
    matrix = torch.zeros(block + width - 1, block, dtype=dtype, device=device)
    matrix[rows, torch.arange(block, device=device).expand(width, -1)] = kernel[:, None].expand(-1, block)
    return matrix


def correlate1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """scipy.ndimage.correlate1d of x along dim (-1 or -2) with an odd, centred kernel."""
    n, radius = x.shape[dim], (kernel.numel() - 1) // 2
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    if 4 * radius >= n or n <= 2 * BLOCK:    # wide kernel or small image: a dense matrix, boundary folded in
        matrix = _dense_filter(n, tuple(kernel.tolist()), mode, x.dtype, x.device)
        return x @ matrix.T if dim == -1 else matrix @ x
    block = min(BLOCK, n)
    blocks = -(-n // block)
    padded = pad(x, radius, radius + blocks * block - n, dim, mode)     # the tail beyond n is cut below
    toeplitz = _toeplitz(tuple(kernel.tolist()), block, x.dtype, x.device)
    if dim == -1:
        windows = padded.unfold(-1, block + 2 * radius, block).contiguous()   # (..., blocks, block + 2r)
        return (windows @ toeplitz).flatten(-2)[..., :n]
    windows = padded.unfold(-2, block + 2 * radius, block).transpose(-1, -2)  # (..., blocks, block + 2r, W)
    return (toeplitz.T @ windows).flatten(-3, -2)[..., :n, :]


def separable(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate the last two dims of x with ``kernel`` along each (x: (..., H, W))."""
    return correlate1d(correlate1d(x, kernel, -1, mode), kernel, -2, mode)


@functools.lru_cache(maxsize=64)
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
    return separable(x, gaussian_kernel1d(float(sigma), truncate), mode)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)) with its default border (reflect-101)."""
    return separable(x, torch.full((3,), 1 / 3), "mirror")


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b >= n (sizes the FFT library handles fastest)."""
    best = 2 ** math.ceil(math.log2(n))
    three = 3
    while three < best:
        best = min(best, three * 2 ** max(0, math.ceil(math.log2(n / three))))
        three *= 3
    return best


@functools.lru_cache(maxsize=16)
def _kernel_spectrum(taps: tuple, shape: tuple, size: tuple, device: torch.device) -> torch.Tensor:
    kernel = torch.tensor(taps, dtype=torch.float32, device=device).view(shape).flip(0, 1)   # correlation
    return torch.fft.rfft2(kernel, s=size)


def correlate2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D: 2-D correlation of every channel, border reflect-101. x: (B, C, H, W).
    Kernels up to 5 x 5 as shifted sums, larger ones through the FFT (the kernel's
    spectrum is cached)."""
    h, w = x.shape[-2:]
    kh, kw = kernel.shape
    padded = pad(pad(x, kh // 2, kh // 2, -2, "mirror"), kw // 2, kw // 2, -1, "mirror")   # (B, C, H+kh-1, W+kw-1)
    if kh * kw <= 25:
        out = torch.zeros_like(x)
        for i, row in enumerate(kernel.tolist()):
            for j, weight in enumerate(row):
                if weight:
                    out.add_(padded[..., i:i + h, j:j + w], alpha=weight)
        return out
    size = (_fft_size(h + kh - 1), _fft_size(w + kw - 1))
    spectrum = _kernel_spectrum(tuple(kernel.flatten().tolist()), tuple(kernel.shape), size, x.device)
    full = torch.fft.irfft2(torch.fft.rfft2(padded, s=size) * spectrum, s=size)
    return full[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]


# --------------------------------------------------------------------------- colour

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

@functools.lru_cache(maxsize=128)
def _zoom_taps(n: int, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index and weight of each output pixel of the reference ``clipped_zoom``
    along one axis: central crop of ceil(n / factor) pixels, scipy.ndimage.zoom order 1
    to round(crop * factor) (its corners map onto each other), centre trim to n."""
    crop = math.ceil(n / factor)
    start = (n - crop) // 2
    size = round(crop * factor)
    trim = (size - n) // 2
    step = (crop - 1) / (size - 1) if size > 1 else 0.0
    position = (torch.arange(n, dtype=torch.float64) + trim) * step
    low = position.floor().clamp(0, max(crop - 2, 0))
    weight = (position - low).clamp(0, 1)
    return low.long() + start, weight.float()


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre of the last two dims by ``factor``, keeping the size."""
    return zoom_sum(x, [factor])


def zoom_sum(x: torch.Tensor, factors) -> torch.Tensor:
    """The sum of ``clipped_zoom(x, f)`` over ``factors``. scipy's order-1 zoom is
    separable: a linear interpolation along columns, then along rows. Both run as row
    gathers (a gather along the last dimension is several times slower on CPU): the
    column pass on one transposed copy of x, the row pass on a transposed copy of its
    result."""
    transposed = x.transpose(-1, -2).contiguous()                     # (..., W, H)
    total = None
    for factor in factors:
        columns = _zoom_rows(transposed, factor).transpose(-1, -2).contiguous()   # (..., H, W)
        zoomed = _zoom_rows(columns, factor)
        total = zoomed if total is None else total.add_(zoomed)
    return total


def _zoom_rows(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference ``clipped_zoom`` along dim -2 of a contiguous x."""
    n = x.shape[-2]
    index, weight = (t.to(x.device) for t in _zoom_taps(n, factor))
    upper = (index + 1).clamp_max(n - 1)
    return torch.lerp(x.index_select(-2, index), x.index_select(-2, upper), weight.to(x.dtype)[:, None])


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' motion blur without ImageMagick: a one-sided Gaussian-weighted
    sum of copies shifted along the angle (one angle per image, (B,) degrees), edges
    replicated (the reference ``shift``); an image stops adding copies once the shift
    leaves it, as the reference does."""
    b, _, h, w = x.shape
    width = 2 * radius + 1
    weights = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    angle = torch.deg2rad(angle_deg.double().cpu())[:, None]
    steps = torch.arange(width, dtype=torch.float64)[None]
    dys = -torch.ceil(steps * torch.sin(angle) - 0.5).long()                   # (B, width)
    dxs = -torch.ceil(steps * torch.cos(angle) - 0.5).long()
    inside = ((dys.abs() < h) & (dxs.abs() < w)).long().cumprod(1).bool()
    dys, dxs = dys * inside, dxs * inside
    weights = (weights / weights.sum())[None] * inside                         # (B, width)
    margin = int(max(dys.abs().max(), dxs.abs().max()))
    padded = F.pad(x, (margin,) * 4, mode="replicate")                        # (B, C, H + 2m, W + 2m)
    out = x.new_zeros(x.shape)
    if b <= 4:       # large images, one by one: a slice per copy
        for i, (image_weights, image_dys, image_dxs) in enumerate(zip(weights.tolist(), dys.tolist(), dxs.tolist())):
            for weight, dy, dx in zip(image_weights, image_dys, image_dxs):
                if weight:
                    out[i].add_(padded[i, :, margin - dy:margin - dy + h, margin - dx:margin - dx + w], alpha=weight)
        return out
    # many small images: one gather per copy for the whole batch, each image at its own offset
    row = w + 2 * margin
    base = ((torch.arange(h, device=x.device)[:, None] + margin) * row
            + torch.arange(w, device=x.device)[None] + margin).flatten()        # (H*W,)
    flat = padded.flatten(2)                                                   # (B, C, (H + 2m)(W + 2m))
    offsets = (-dys * row - dxs).to(x.device)                                  # (B, width)
    weights = weights.to(x.device, x.dtype)
    out = out.flatten(2)                                                       # (B, C, H*W)
    for step in range(width):
        index = (base[None] + offsets[:, step, None])[:, None].expand(-1, x.shape[1], -1)
        out.addcmul_(flat.gather(2, index), weights[:, step, None, None])
    return out.view(x.shape)


def glass_shuffle(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, delta: int) -> torch.Tensor:
    """One pass of ImageNet-C's glass-blur pixel shuffle, exactly, without its loop.

    The reference visits rows H - delta .. delta + 1 and in each the columns W - delta
    .. delta + 1, both descending, and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
    on an (H, W, 3) array with (h', w') = (h + dy, w + dx). Both sides of that statement
    are numpy views, so it is a copy, not a swap: x[h, w] takes the current value of
    x[h', w'] and x[h', w'] keeps it. A pixel is written once, when it is visited, so
    the current value of x[h', w'] is its final value if the sweep visited it before
    (a later position in raster order, inside the visited block) and its original value
    otherwise. Following those links (pointer doubling: each round halves the chains)
    gives every pixel its source at once. dy, dx: (B, H, W) offsets in [-delta, delta)
    (read only at visited pixels)."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    visited = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)     # (1, H, W)
    own = (rows * w + cols).expand(b, h, w)
    target = own + dy * w + dx
    target_visited = visited.flatten(1).expand(b, -1).gather(1, target.clamp(0, h * w - 1).flatten(1)).view(b, h, w)
    source = torch.where(visited, target, own).flatten(1)                                   # (B, H*W)
    linked = (visited & (target > own) & target_visited).flatten(1)
    while linked.any():
        source, linked = torch.where(linked, source.gather(1, source), source), linked & linked.gather(1, source)
    index = source[:, None].expand(b, c, h * w)
    return x.flatten(2).gather(2, index).view(b, c, h, w)


# --------------------------------------------------------------------------- noise fields

@functools.lru_cache(maxsize=8)
def _diamond_square_plan(mapsize: int) -> tuple:
    """Per level, the flat indices of the points the reference ``plasma_fractal`` fills and
    of their four neighbours (wrapping around): first the square centres, then the
    diamond points (those right of each corner, then those below it)."""
    plan, step = [], mapsize
    while step >= 2:
        half = step // 2
        r = torch.arange(0, mapsize, step)[:, None]
        c = torch.arange(0, mapsize, step)[None, :]

        def flat(rows, cols):
            return ((rows % mapsize) * mapsize + cols % mapsize).flatten()

        squares = (flat(r + half, c + half),
                   torch.stack([flat(r, c), flat(r + step, c), flat(r, c + step), flat(r + step, c + step)]))
        right = torch.stack([flat(r + half, c + half), flat(r - half, c + half), flat(r, c), flat(r, c + step)])
        below = torch.stack([flat(r + half, c + half), flat(r + half, c - half), flat(r, c), flat(r + step, c)])
        diamonds = (torch.cat([flat(r, c + half), flat(r + half, c)]), torch.cat([right, below], 1))
        plan.append((squares, diamonds))                                     # neighbours: (4, points)
        step //= 2
    return tuple(plan)


def plasma_fractal(batch: int, mapsize: int, decay: float, generator, like: torch.Tensor) -> torch.Tensor:
    """Diamond-square height maps (B, mapsize, mapsize) in [0, 1] (reference
    ``plasma_fractal``, vectorised over the batch); mapsize is a power of two. Level by
    level each new point gets the mean of its four neighbours plus wibble * U(-wibble,
    wibble), wibble starting at 100 and divided by ``decay`` at every level; the
    uniforms are drawn in one go (one per point but the corner)."""
    maps = torch.zeros(batch, mapsize * mapsize, dtype=like.dtype, device=like.device)
    noise = uniform((batch, mapsize * mapsize), -1, 1, generator, like)
    used, wibble = 0, 100.0
    for level in _diamond_square_plan(mapsize):
        for targets, neighbours in level:
            targets, neighbours = targets.to(maps.device), neighbours.to(maps.device)
            count = len(targets)
            mean = maps.index_select(1, neighbours.flatten()).view(batch, 4, count).sum(1).mul_(0.25)
            maps.index_copy_(1, targets, mean.add_(noise[:, used:used + count], alpha=wibble * wibble))
            used += count
        wibble /= decay
    low = maps.amin(1, keepdim=True)
    high = maps.amax(1, keepdim=True)
    return maps.sub_(low).div_(high - low).view(batch, mapsize, mapsize)


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


# --------------------------------------------------------------------------- morphology

def edge_distance(edges: torch.Tensor, limit: int) -> torch.Tensor:
    """Euclidean distance (B, H, W) to the nearest True pixel of ``edges``, capped at
    ``limit`` (cv2.distanceTransform + THRESH_TRUNC). Exact: the distance along each
    column to its nearest edge (running max / min of edge row indices), then the
    minimum over column offsets up to ``limit`` (farther columns are beyond the cap)."""
    b, h, w = edges.shape
    rows = torch.arange(h, device=edges.device, dtype=torch.float32).view(1, h, 1).expand(b, h, w)
    far = float(2 * (h + limit + 1))
    above = torch.where(edges, rows, -far).cummax(1).values
    below = torch.where(edges, rows, far).flip(1).cummin(1).values.flip(1)
    column = torch.minimum(rows - above, below - rows).square_().clamp_max_(limit * limit + 1)
    padded = F.pad(column, (limit, limit), value=float(limit * limit + 1))           # (B, H, W + 2 limit)
    total = column.clone()
    for d in range(1, limit + 1):
        nearer = torch.minimum(padded[..., limit - d:limit - d + w], padded[..., limit + d:limit + d + w])
        torch.minimum(total, nearer.add_(d * d), out=total)
    return total.sqrt_().clamp_max_(limit)


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


# --------------------------------------------------------------------------- 8-bit images

def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 levels (B, H, W, C) on the CPU, rounded (PIL's conversion)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous()


def from_levels(levels: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> [0, 1] floats (B, C, H, W) like ``like``."""
    return torch.from_numpy(levels).to(like.device).permute(0, 3, 1, 2).to(like.dtype).div_(255)


def jpeg_round_trip(levels: torch.Tensor, quality: int) -> np.ndarray:
    """Encode each uint8 image (B, H, W, C) as a JPEG with Pillow (libjpeg-turbo) at
    ``quality``, decode it: uint8 (B, H, W, C). Grey images are one-component JPEGs."""
    out = np.empty(tuple(levels.shape), dtype=np.uint8)
    for i, array in enumerate(levels.numpy()):
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(quality))
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer)).reshape(array.shape)
    return out
