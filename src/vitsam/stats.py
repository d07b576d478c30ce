"""Uncertainty for the numbers a report shows: accuracies, their differences, seed spreads.

Every accuracy in a report comes with a 95% interval, and every claim's verdict is
computed from one (never written by hand):

- ``accuracy_interval``: Wilson score interval of one accuracy (k correct of n images);
- ``paired_difference``: the accuracy difference of two models on the SAME images
  (SAM minus vanilla), with a paired bootstrap interval over images, which is much
  tighter than two independent intervals because both models get the easy images right;
- ``difference_of_differences``: (gain of one pair) - (gain of another pair), e.g.
  "SAM helps ViT more than ResNet", each pair resampled on its own images;
- ``seed_interval``: mean and Student-t interval over seeds (runs that differ only in seed).

Per-image vectors are correctness (boolean or 0/1) or, more generally, scores in [0, 1]
(e.g. the share of an image's corrupted copies classified right: copies of one image are
not independent, so the image is the unit resampled), one entry per test image, in the
same image order for the models being compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vitsam.errors import VitsamError

Z95 = 1.959963984540054           # standard normal 97.5% quantile
BOOTSTRAP_SAMPLES = 2000          # resamples per interval: the 2.5% / 97.5% quantiles move by < 0.1 point
# Student-t 97.5% quantiles for 1..30 degrees of freedom (tabulated, no scipy needed)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% interval (all in the same units)."""
    value: float
    low: float | None
    high: float | None
    n: int                        # images (or seeds) behind it

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_json(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def scaled(self, factor: float) -> "Estimate":
        """The same estimate in other units (e.g. x100 for percentage points)."""
        low = None if self.low is None else self.low * factor
        high = None if self.high is None else self.high * factor
        if factor < 0:
            low, high = high, low
        return Estimate(self.value * factor, low, high, self.n)


BOOTSTRAP_CHUNK = 100             # resamples drawn at once (memory: chunk x images indices)


def _as_scores(values, name: str) -> np.ndarray:
    """Per-image correctness or scores in [0, 1] as float64 (n,)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise VitsamError(f"{name}: expected a non-empty 1-D array of per-image scores, got shape {array.shape}")
    if array.min() < 0 or array.max() > 1:
        raise VitsamError(f"{name}: per-image scores must lie in [0, 1] (correctness or a share of copies)")
    return array


def accuracy_interval(correct: int | Sequence, n: int | None = None) -> Estimate:
    """Wilson score interval (Wilson 1927) for an accuracy: ``correct`` is either a count
    (then give ``n``) or a per-image correctness array. Unlike the normal approximation it
    stays inside [0, 1] and is sensible at accuracies near 0 or 1."""
    if n is None:
        array = _as_scores(correct, "accuracy_interval").astype(bool)
        k, n = int(array.sum()), len(array)
    else:
        k = int(correct)
    if n <= 0 or not 0 <= k <= n:
        raise VitsamError(f"accuracy_interval needs 0 <= correct <= n and n > 0, got correct={k}, n={n}")
    p = k / n
    denom = 1 + Z95 ** 2 / n
    center = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)      # exact at the edges, not 1 - 1e-16
    high = 1.0 if k == n else min(1.0, center + half)
    return Estimate(p, low, high, n)


def _bootstrap_means(values: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``samples`` resamples (with replacement) of ``values`` (n,) -> (samples,),
    drawn ``BOOTSTRAP_CHUNK`` at a time so memory stays at chunk x n indices."""
    means = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        index = rng.integers(0, len(values), size=(min(BOOTSTRAP_CHUNK, samples - start), len(values)))
        means.append(values[index].mean(axis=1))
    return np.concatenate(means)


def _percentile_interval(value: float, means: np.ndarray, n: int) -> Estimate:
    low, high = np.quantile(means, [0.025, 0.975])
    return Estimate(value, float(low), float(high), n)


def _paired(a, b, name: str) -> np.ndarray:
    """Per-image b - a for two score vectors on the same images."""
    a, b = _as_scores(a, name), _as_scores(b, name)
    if len(a) != len(b):
        raise VitsamError(f"{name} needs the same images for both models, got {len(a)} and {len(b)}")
    return b - a


def paired_difference(correct_a, correct_b, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """accuracy(b) - accuracy(a) on the same images, with a 95% paired bootstrap interval
    (percentile method, images resampled with replacement)."""
    diff = _paired(correct_a, correct_b, "paired_difference")     # per image, in [-1, 1]
    return _percentile_interval(float(diff.mean()), _bootstrap_means(diff, samples, np.random.default_rng(seed)),
                                len(diff))


def difference_of_differences(pair_1: tuple, pair_2: tuple, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES,
                              same_images: bool = False) -> Estimate:
    """(acc(b1) - acc(a1)) - (acc(b2) - acc(a2)) for pairs (a, b) of per-image scores.
    Each pair on its own images: the two paired bootstraps are drawn independently.
    ``same_images``: all four vectors score the same images (e.g. the gain at two
    training fractions on one test set), so the images are resampled jointly, which
    keeps their correlation and gives a tighter, still valid interval."""
    rng = np.random.default_rng(seed)
    d1 = _paired(*pair_1, "difference_of_differences")
    d2 = _paired(*pair_2, "difference_of_differences")
    value = float(d1.mean() - d2.mean())
    if same_images:
        if len(d1) != len(d2):
            raise VitsamError(f"difference_of_differences(same_images=True) got {len(d1)} and {len(d2)} images")
        return _percentile_interval(value, _bootstrap_means(d1 - d2, samples, rng), len(d1))
    means = _bootstrap_means(d1, samples, rng) - _bootstrap_means(d2, samples, rng)
    return _percentile_interval(value, means, min(len(d1), len(d2)))


def seed_interval(values: Sequence[float]) -> Estimate:
    """Mean over seeds with a Student-t 95% interval; a single seed has no interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise VitsamError(f"seed_interval needs a non-empty list of numbers, got {values!r}")
    mean = float(x.mean())
    if len(x) == 1:
        return Estimate(mean, None, None, 1)
    dof = len(x) - 1
    t = _T975[dof - 1] if dof <= len(_T975) else Z95
    half = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Estimate(mean, mean - half, mean + half, len(x))
