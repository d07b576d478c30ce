"""The sharpness measures SAM papers report, all on the training loss in eval mode:

- worst-case sharpness: max_{||eps||_2 <= rho} L(w + eps) - L(w), the quantity SAM
  minimizes (Foret et al. 2021, eq. 1), by a few projected ascent steps;
- adaptive sharpness: the same over the ball ||T_w^{-1} eps||_2 <= rho with
  T_w = |w| + eta element-wise (Kwon et al. 2021, ASAM, eq. 7), invariant to rescaling
  the weights (Andriushchenko et al. 2023 use it to compare models);
- m-sharpness: the mean over disjoint subsets of m examples of each subset's
  worst-case sharpness, the quantity SAM with per-device perturbations minimizes
  (Foret et al. 2021, Sec. 4.1; Andriushchenko & Flammarion 2022, Sec. 3).

Ascent: in the ball's coordinates delta (eps = T_w delta), each step moves delta by
rho along the normalized gradient and projects back on the ball; the first step is
SAM's perturbation rho g / ||g||, and a fixed point is a KKT point of the
maximization. The largest loss seen is kept (a lower bound on the true maximum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import (AnalysisResult, Batch, LossFn, batch_weights, cross_entropy, disjoint_subsets,
                             measurement_mode, spread, take)
from vitsam.errors import VitsamError
from vitsam.progress import Progress


def _loss_and_grad(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, frozen: dict,
                   shifted: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean loss over the batches at the ``shifted`` parameters and its gradient there."""
    leaves = {n: t.detach().requires_grad_(True) for n, t in shifted.items()}
    total, grads = 0.0, {n: torch.zeros_like(t) for n, t in leaves.items()}
    with measurement_mode(model), torch.enable_grad():
        for weight, (images, labels) in zip(batch_weights(batches), batches):
            loss = loss_fn(torch.func.functional_call(model, {**frozen, **leaves}, (images,)), labels)
            for (n, g) in zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)):
                if g is not None:
                    grads[n] += weight * g
            total += weight * float(loss.detach())
    return total, grads


def _global_norm(tensors) -> torch.Tensor:
    return torch.sqrt(sum(t.double().pow(2).sum() for t in tensors))


def worst_case_sharpness(model: nn.Module, batches: Sequence[Batch], rho: float, steps: int = 5,
                         loss_fn: LossFn = cross_entropy, adaptive: bool = False, eta: float = 0.0,
                         progress: Progress | None = None) -> dict:
    """max over the rho-ball of L(w + eps) - L(w) by ``steps`` projected ascent steps
    (module docstring); ``adaptive``: the ball ||eps / (|w| + eta)||_2 <= rho.
    ``progress`` (a ``vitsam.progress.Progress``) advances once per step.
    Returns {"loss", "perturbed_loss", "sharpness", "eps_norm", "rho", "steps", "adaptive"}."""
    if rho < 0 or steps < 1:
        raise VitsamError(f"worst-case sharpness needs rho >= 0 and steps >= 1, got rho={rho}, steps={steps}")
    weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    scale = {n: (w.abs() + eta) if adaptive else torch.ones_like(w) for n, w in weights.items()}
    delta = {n: torch.zeros_like(w) for n, w in weights.items()}
    base, grads = _loss_and_grad(model, batches, loss_fn, frozen, weights)
    best, best_eps = base, 0.0
    for step in range(steps):
        ascent = {n: scale[n] * grads[n] for n in weights}  # the gradient in delta coordinates
        norm = float(_global_norm(ascent.values()))
        if norm == 0.0 or rho == 0.0:
            if progress is not None:
                progress.advance(steps - step)  # nowhere to climb: the other steps are done
            break
        delta = {n: delta[n] + (rho / norm) * ascent[n] for n in weights}
        length = float(_global_norm(delta.values()))
        if length > rho:
            delta = {n: d * (rho / length) for n, d in delta.items()}
        eps = {n: scale[n] * delta[n] for n in weights}
        loss, grads = _loss_and_grad(model, batches, loss_fn, frozen, {n: weights[n] + eps[n] for n in weights})
        if progress is not None:
            progress.advance()
        if loss > best:
            best, best_eps = loss, float(_global_norm(eps.values()))
    return {"rho": rho, "steps": steps, "adaptive": adaptive, "eta": eta if adaptive else None, "loss": base,
            "perturbed_loss": best, "sharpness": best - base, "eps_norm": best_eps}


def m_sharpness(model: nn.Module, batches: Sequence[Batch], rho: float, m: int, steps: int = 5,
                loss_fn: LossFn = cross_entropy, adaptive: bool = False, eta: float = 0.0,
                progress: Progress | None = None) -> dict:
    """The mean over disjoint subsets of ``m`` consecutive examples of each subset's
    worst-case sharpness (``worst_case_sharpness`` on that subset's loss), with its
    spread over subsets; left-over examples are not used."""
    examples = sum(len(y) for _, y in batches)
    if m < 1 or m > examples:
        raise VitsamError(f"m-sharpness needs 1 <= m <= {examples} examples, got m={m}")
    values = [worst_case_sharpness(model, subset, rho, steps, loss_fn, adaptive, eta, progress)["sharpness"]
              for subset in disjoint_subsets(batches, examples // m)]
    return {"m": m, "rho": rho, "steps": steps, "adaptive": adaptive, "subsets": len(values),
            "sharpness": float(np.mean(values)), "spread": spread(values)}


@dataclass
class SharpnessAnalysis:
    """Worst-case sharpness (L2 ball of radius ``rho``), adaptive sharpness (radius
    ``adaptive_rho`` in the |w| + ``eta`` scaled ball) and m-sharpness (``m`` examples
    per subset, L2 ball; 0 skips it), each by ``steps`` ascent steps on ``examples``
    training images."""
    name: ClassVar[str] = "sharpness"
    rho: float = 0.05
    adaptive_rho: float = 0.5
    eta: float = 0.0
    m: int = 32
    steps: int = 5
    examples: int = 256

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        batches = take(batches, self.examples)
        examples = sum(len(y) for _, y in batches)
        metrics = {"num_examples": examples}
        with Progress(self.steps, f"{self.name} worst-case", "steps") as bar:
            metrics["worst_case"] = worst_case_sharpness(model, batches, self.rho, self.steps, loss_fn, progress=bar)
        with Progress(self.steps, f"{self.name} adaptive", "steps") as bar:
            metrics["adaptive"] = worst_case_sharpness(model, batches, self.adaptive_rho, self.steps, loss_fn,
                                                       adaptive=True, eta=self.eta, progress=bar)
        if self.m:
            with Progress(examples // self.m * self.steps, f"{self.name} m={self.m}", "steps") as bar:
                metrics["m_sharpness"] = m_sharpness(model, batches, self.rho, self.m, self.steps, loss_fn,
                                                     progress=bar)
        return AnalysisResult(metrics)
