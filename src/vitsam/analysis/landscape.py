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
from vitsam.errors import VitsamError, unknown_choice
from vitsam.progress import Progress

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


def _evaluate(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, params: dict,
              progress: Progress | None) -> tuple[float, float]:
    """(loss, error) at ``params``, advancing ``progress`` (a ``vitsam.progress.Progress``) by one."""
    point = evaluate(model, batches, loss_fn, params)
    if progress is not None:
        progress.advance()
    return point


def loss_curve(model: nn.Module, batches: Sequence[Batch], direction: Direction,
               alphas: Sequence[float], loss_fn: LossFn = cross_entropy,
               progress: Progress | None = None) -> tuple[list, list]:
    """(losses, errors) at w + alpha d for each alpha."""
    points = [_evaluate(model, batches, loss_fn, _shifted(model, [(a, direction)]), progress) for a in alphas]
    return [p[0] for p in points], [p[1] for p in points]


def loss_surface(model: nn.Module, batches: Sequence[Batch], d1: Direction, d2: Direction,
                 alphas: Sequence[float], betas: Sequence[float],
                 loss_fn: LossFn = cross_entropy, progress: Progress | None = None) -> np.ndarray:
    """Losses at w + alpha d1 + beta d2, shape (len(betas), len(alphas))."""
    return np.array([[_evaluate(model, batches, loss_fn, _shifted(model, [(a, d1), (b, d2)]), progress)[0]
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


SIGMA_SCALES = ("filter", "absolute")


def gaussian_noise(model: nn.Module, sigma: float, generator: torch.Generator,
                   scale: str = "filter") -> Direction:
    """One draw of parameter noise.

    ``"filter"`` (the default for comparisons): each filter of a weight (a slice along
    its first axis, as in ``filter_normalized_direction``) gets i.i.d. Gaussian noise of
    standard deviation sigma * RMS(filter), so its noise has norm ~ sigma * ||filter||,
    and one-dimensional parameters (biases, norm gains) none: Li et al. 2018's filter
    normalization applied to the noise, which makes the measure invariant to rescaling a
    filter (Dinh et al. 2017: with absolute noise, a model with larger weights, as SAM's
    are, looks flatter for free). ``"absolute"``: N(0, sigma^2) on every parameter."""
    if scale not in SIGMA_SCALES:
        raise unknown_choice("Gaussian perturbation scale", scale, SIGMA_SCALES)
    noise = {}
    for name, w in model.named_parameters():
        w = w.detach()
        z = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        if scale == "absolute":
            noise[name] = sigma * z
        elif w.ndim <= 1:
            noise[name] = torch.zeros_like(w)
        else:
            rms = w.flatten(1).pow(2).mean(dim=1).sqrt()  # (filters,)
            noise[name] = sigma * z * rms.view(-1, *([1] * (w.ndim - 1)))
    return noise


def gaussian_perturbed(model: nn.Module, batches: Sequence[Batch], sigma: float, draws: int = 5,
                       seed: int = 0, loss_fn: LossFn = cross_entropy, scale: str = "filter",
                       progress: Progress | None = None) -> dict:
    """Mean and standard deviation over ``draws`` of the loss and error at w + noise
    (``gaussian_noise``; one draw suffices at sigma = 0)."""
    generator = torch.Generator().manual_seed(seed)
    losses, errors = [], []
    for _ in range(draws if sigma > 0 else 1):
        noise = gaussian_noise(model, sigma, generator, scale)
        noisy = {n: w.detach() + noise[n] for n, w in model.named_parameters()}
        loss, error = _evaluate(model, batches, loss_fn, noisy, progress)
        losses.append(loss)
        errors.append(error)
    return {"sigma": sigma, "sigma_scale": scale, "draws": len(losses), "loss": float(np.mean(losses)),
            "loss_std": float(np.std(losses)), "error": float(np.mean(errors)), "error_std": float(np.std(errors))}


# --------------------------------------------------------------------------- trajectory PCA

def pca_directions(model: nn.Module, trajectory: Sequence[dict[str, torch.Tensor]],
                   ignore_biases_and_norms: bool = True) -> tuple[Direction, Direction, dict]:
    """The two principal directions of an optimization trajectory around the current
    weights w (Li et al. 2018, Sec. 7): the rows w_i - w for each snapshot w_i (state
    dicts or name -> tensor maps of ``model``'s parameters; one-dimensional parameters
    zeroed when ``ignore_biases_and_norms``, as in Li et al.'s code), centered, and
    their top two right singular vectors (unit directions). Returns the directions and
    {"explained_variance_ratio": [r1, r2], "coordinates": [[a_i, b_i], ...]}, the
    snapshots projected on the two directions (w_i - w = a_i d1 + b_i d2 + rest)."""
    if len(trajectory) < 2:
        raise VitsamError(f"PCA directions need at least 2 trajectory snapshots, got {len(trajectory)}")
    params = {n: w.detach() for n, w in model.named_parameters()}
    kept = [n for n, w in params.items() if not (ignore_biases_and_norms and w.ndim <= 1)]
    for i, snapshot in enumerate(trajectory):
        missing = [n for n in kept if n not in snapshot]
        if missing:
            raise VitsamError(f"trajectory snapshot {i} lacks parameters {missing[:3]} of the model")
    rows = torch.stack([torch.cat([(s[n].to(params[n].device, torch.float64) - params[n].double()).reshape(-1)
                                   for n in kept]) for s in trajectory])  # (snapshots, kept entries)
    centered = rows - rows.mean(dim=0, keepdim=True)
    _, singular, vt = torch.linalg.svd(centered, full_matrices=False)
    variance = singular ** 2
    ratios = (variance[:2] / variance.sum()).tolist()
    directions = []
    for component in vt[:2]:
        pieces = dict(zip(kept, component.split([params[n].numel() for n in kept])))
        directions.append({n: pieces[n].view_as(w).to(w.dtype) if n in pieces else torch.zeros_like(w)
                           for n, w in params.items()})
    coordinates = (rows @ vt[:2].T).tolist()
    return directions[0], directions[1], {"explained_variance_ratio": ratios, "coordinates": coordinates}


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

DIRECTIONS = ("random", "pca")


@dataclass
class LossLandscape:
    """1-D curve along one direction and a 2-D grid along two, with contour and surface
    figures. ``directions="random"``: filter-normalized Gaussian directions over
    [-span, span] (alpha = 1 moves every filter by its own norm); ``"pca"``: the two
    principal directions of the training trajectory (``pca_directions``; ``run`` then
    needs ``trajectory=``, a list of weight snapshots), unit vectors, over the range the
    projected trajectory covers, widened by ``span`` of that range on each side."""
    name: ClassVar[str] = "landscape"
    span: float = 1.0
    points: int = 17
    grid: int = 9
    examples: int = 128
    ignore_biases_and_norms: bool = True
    directions: str = "random"
    seed: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn = cross_entropy,
            trajectory: Sequence[dict] | None = None) -> AnalysisResult:
        if self.directions not in DIRECTIONS:
            raise unknown_choice("landscape directions", self.directions, DIRECTIONS)
        batches = take(batches, self.examples)
        metrics: dict = {"directions": self.directions}
        if self.directions == "pca":
            if trajectory is None:
                raise VitsamError("landscape directions 'pca' need the training trajectory: pass trajectory= "
                                  "(a list of weight snapshots of this model)")
            d1, d2, info = pca_directions(model, trajectory, self.ignore_biases_and_norms)
            coords = np.asarray(info["coordinates"])
            lo, hi = np.minimum(coords.min(axis=0), 0.0), np.maximum(coords.max(axis=0), 0.0)
            pad = self.span * (hi - lo)
            axes = [np.linspace(lo[i] - pad[i], hi[i] + pad[i], self.grid) for i in range(2)]
            alphas = np.linspace(lo[0] - pad[0], hi[0] + pad[0], self.points).tolist()
            metrics.update(info)
        else:
            d1, d2 = (filter_normalized_direction(model, self.seed + i, self.ignore_biases_and_norms)
                      for i in range(2))
            axes = [np.linspace(-self.span, self.span, self.grid)] * 2
            alphas = np.linspace(-self.span, self.span, self.points).tolist()
        with Progress(len(alphas) + len(axes[0]) * len(axes[1]), self.name, "points") as bar:
            losses, errors = loss_curve(model, batches, d1, alphas, loss_fn, bar)
            surface = loss_surface(model, batches, d1, d2, axes[0], axes[1], loss_fn, bar)
        metrics.update({"alphas": alphas, "loss_1d": losses, "error_1d": errors, "axis_2d": axes[0].tolist(),
                        "axis_2d_beta": axes[1].tolist(), "loss_2d": surface.tolist()})
        figures = {"landscape_1d": plot_curves({"loss": (alphas, losses)}, "1-D loss landscape"),
                   "landscape_contour": plot_contour(axes[0], axes[1], surface, "2-D loss landscape"),
                   "landscape_surface": plot_surface(axes[0], axes[1], surface, "2-D loss landscape")}
        if self.directions == "pca":
            figures["landscape_contour"].axes[0].plot(coords[:, 0], coords[:, 1], "w.-", lw=0.8)
        return AnalysisResult(metrics, figures)


@dataclass
class GaussianPerturbation:
    """Training loss and error at w + Gaussian noise, averaged over ``draws``, per sigma;
    ``sigma_scale="filter"`` (default): sigma relative to each filter's RMS, biases and
    norm parameters unperturbed (``gaussian_noise``); ``"absolute"``: N(0, sigma^2)."""
    name: ClassVar[str] = "perturbed"
    sigmas: tuple = (0.0, 0.02, 0.05, 0.1, 0.2)
    sigma_scale: str = "filter"
    draws: int = 3
    examples: int = 256
    seed: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        if self.sigma_scale not in SIGMA_SCALES:
            raise unknown_choice("Gaussian perturbation scale", self.sigma_scale, SIGMA_SCALES)
        batches = take(batches, self.examples)
        draws = sum(self.draws if s > 0 else 1 for s in self.sigmas)  # sigma 0 needs one draw
        with Progress(draws, f"{self.name} (Gaussian noise)", "draws") as bar:
            rows = [gaussian_perturbed(model, batches, s, self.draws, self.seed, loss_fn, self.sigma_scale, bar)
                    for s in self.sigmas]
        xlabel = "sigma (relative to each filter's RMS)" if self.sigma_scale == "filter" else "sigma"
        figure = plot_curves({"loss": ([r["sigma"] for r in rows], [r["loss"] for r in rows])},
                             "Gaussian-perturbed training loss", xlabel=xlabel)
        return AnalysisResult({"sigma_scale": self.sigma_scale, "perturbed": rows}, {"perturbed_loss": figure})
