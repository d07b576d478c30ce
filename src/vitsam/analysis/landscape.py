"""Loss landscapes around the weights (the paper's landscape figure, after Li et al. 2018),
the linear interpolation between two checkpoints, and the Gaussian-perturbed loss.

Losses are evaluated with ``functional_call`` at w + alpha d (+ beta e): the model is
never copied or modified. Directions are filter-normalized: each output filter (a slice
along a weight's first axis: a row of a linear layer, an output channel of a conv) of
the random direction gets the norm of the matching weight filter, so directions are
comparable across layers and across models whose weights differ in scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import AnalysisResult, Batch, LossFn, cross_entropy, evaluate, take

Direction = dict[str, torch.Tensor]  # parameter name -> tensor shaped like the parameter


def filter_normalized_direction(model: nn.Module, seed: int = 0,
                                ignore_biases_and_norms: bool = True) -> Direction:
    """A Gaussian direction with every filter rescaled to its weight filter's norm.

    One-dimensional parameters (biases, norm scales and shifts) get a zero direction when
    ``ignore_biases_and_norms`` (Li et al.'s ``ignore='biasbn'``) and otherwise the
    weight itself, as in Li et al.'s code."""
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for name, w in model.named_parameters():
        w = w.detach()
        if w.ndim <= 1:
            direction[name] = torch.zeros_like(w) if ignore_biases_and_norms else w.clone()
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        d_filters, w_filters = d.flatten(1), w.flatten(1)  # (filters, fan_in)
        scale = w_filters.norm(dim=1, keepdim=True) / (d_filters.norm(dim=1, keepdim=True) + 1e-10)
        direction[name] = (d_filters * scale).view_as(w)
    return direction


def _shifted(model: nn.Module, steps: Sequence[tuple[float, Direction]]) -> dict[str, torch.Tensor]:
    """{name: w + sum_i c_i d_i} for the (coefficient, direction) pairs."""
    params = {}
    for name, w in model.named_parameters():
        params[name] = w.detach() + sum(c * d[name] for c, d in steps)
    return params


def loss_curve(model: nn.Module, batches: Sequence[Batch], direction: Direction,
               alphas: Sequence[float], loss_fn: LossFn = cross_entropy) -> tuple[list, list]:
    """(losses, errors) at w + alpha d for each alpha."""
    points = [evaluate(model, batches, loss_fn, _shifted(model, [(a, direction)])) for a in alphas]
    return [p[0] for p in points], [p[1] for p in points]


def loss_surface(model: nn.Module, batches: Sequence[Batch], d1: Direction, d2: Direction,
                 alphas: Sequence[float], betas: Sequence[float],
                 loss_fn: LossFn = cross_entropy) -> np.ndarray:
    """Losses at w + alpha d1 + beta d2, shape (len(betas), len(alphas))."""
    return np.array([[evaluate(model, batches, loss_fn, _shifted(model, [(a, d1), (b, d2)]))[0]
                      for a in alphas] for b in betas])


def interpolate(model: nn.Module, state_a: dict, state_b: dict, batches: Sequence[Batch],
                ts: Sequence[float], loss_fn: LossFn = cross_entropy) -> tuple[list, list]:
    """(losses, errors) of (1 - t) a + t b for each t, with a, b state dicts of ``model``'s
    architecture (e.g. the vanilla and SAM runs). Floating-point buffers (BatchNorm
    running statistics) are interpolated too; integer buffers come from ``a``."""
    losses, errors = [], []
    for t in ts:
        mixed = {k: ((1 - t) * v + t * state_b[k].to(v.device)) if v.is_floating_point() else v
                 for k, v in state_a.items()}
        loss, error = evaluate(model, batches, loss_fn, mixed)
        losses.append(loss)
        errors.append(error)
    return losses, errors


def gaussian_perturbed(model: nn.Module, batches: Sequence[Batch], sigma: float, draws: int = 5,
                       seed: int = 0, loss_fn: LossFn = cross_entropy) -> dict[str, float]:
    """Mean and standard deviation over ``draws`` of the loss and error at
    w + N(0, sigma^2 I) (every parameter perturbed, absolute sigma)."""
    generator = torch.Generator().manual_seed(seed)
    losses, errors = [], []
    for _ in range(draws if sigma > 0 else 1):
        noisy = {n: w.detach() + sigma * torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                 for n, w in model.named_parameters()}
        loss, error = evaluate(model, batches, loss_fn, noisy)
        losses.append(loss)
        errors.append(error)
    return {"sigma": sigma, "loss": float(np.mean(losses)), "loss_std": float(np.std(losses)),
            "error": float(np.mean(errors)), "error_std": float(np.std(errors))}


# --------------------------------------------------------------------------- figures

def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                ylabel: str = "training loss", xlabel: str = "alpha (filter-normalized direction)"):
    """Overlaid 1-D curves: label -> (xs, ys)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_contour(alphas, betas, losses: np.ndarray, title: str = ""):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    filled = ax.contourf(alphas, betas, losses, levels=20, cmap="viridis")
    ax.contour(alphas, betas, losses, levels=20, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="training loss")
    ax.plot([0], [0], "r+")
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    ax.set_title(title)
    return fig


def plot_surface(alphas, betas, losses: np.ndarray, title: str = ""):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4.6, 3.8))
    ax = fig.add_subplot(projection="3d")
    A, B = np.meshgrid(alphas, betas)
    ax.plot_surface(A, B, losses, cmap="viridis", linewidth=0)
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    ax.set_zlabel("loss")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------- analyzers

@dataclass
class LossLandscape:
    """1-D curve along one filter-normalized direction and a 2-D grid along two, over
    [-span, span], with contour and surface figures."""
    name: ClassVar[str] = "landscape"
    span: float = 1.0
    points: int = 17
    grid: int = 9
    examples: int = 128
    ignore_biases_and_norms: bool = True
    seed: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        batches = take(batches, self.examples)
        d1, d2 = (filter_normalized_direction(model, self.seed + i, self.ignore_biases_and_norms)
                  for i in range(2))
        alphas = np.linspace(-self.span, self.span, self.points).tolist()
        losses, errors = loss_curve(model, batches, d1, alphas, loss_fn)
        axis = np.linspace(-self.span, self.span, self.grid)
        surface = loss_surface(model, batches, d1, d2, axis, axis, loss_fn)
        metrics = {"alphas": alphas, "loss_1d": losses, "error_1d": errors,
                   "axis_2d": axis.tolist(), "loss_2d": surface.tolist()}
        figures = {"landscape_1d": plot_curves({"loss": (alphas, losses)}, "1-D loss landscape"),
                   "landscape_contour": plot_contour(axis, axis, surface, "2-D loss landscape"),
                   "landscape_surface": plot_surface(axis, axis, surface, "2-D loss landscape")}
        return AnalysisResult(metrics, figures)


@dataclass
class GaussianPerturbation:
    """Training loss and error at w + N(0, sigma^2), averaged over ``draws``, per sigma."""
    name: ClassVar[str] = "perturbed"
    sigmas: tuple = (0.0, 0.01, 0.02, 0.05)
    draws: int = 2
    examples: int = 256
    seed: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        batches = take(batches, self.examples)
        rows = [gaussian_perturbed(model, batches, s, self.draws, self.seed, loss_fn) for s in self.sigmas]
        figure = plot_curves({"loss": ([r["sigma"] for r in rows], [r["loss"] for r in rows])},
                             "Gaussian-perturbed training loss", xlabel="sigma")
        return AnalysisResult({"perturbed": rows}, {"perturbed_loss": figure})

