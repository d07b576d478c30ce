"""Loss-geometry analyzers: the paper's lens (Table 1, the per-block table, the
landscape, sparsity and attention figures) and the measures SAM papers report.

Modules: ``operators`` (the Hessian and Gauss-Newton operators), ``curvature``
(Lanczos, power iteration, Hutchinson / Hutch++ traces, stochastic Lanczos quadrature),
``hessian`` (the Hessian and GGN analyzers, the per-block table), ``ntk`` (empirical
kernels and their condition numbers), ``landscape`` (filter-normalized and
trajectory-PCA directions, 1-D / 2-D plots, interpolation, Gaussian-perturbed loss),
``sharpness`` (worst-case, adaptive and m-sharpness), ``activations`` (MLP sparsity),
``attention`` (class-token maps, rollout) and ``report`` (the report's geometry section).

Every analyzer has one shape: a dataclass of options with a class attribute ``name``,
configured once, and ``run(model, batches, loss_fn=...)`` returning an
``AnalysisResult`` whose ``metrics`` are JSON-serializable and whose ``figures`` are
matplotlib figures. They depend only on ``nn.Module`` plus, where present, the model
contract of ``vitsam.models.base``.

This file holds the few helpers they share: the measurement mode (eval mode and the
explicit attention path), the size-weighted loss over a fixed list of batches, and
disjoint subsets with the spread of a statistic over them.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError
from vitsam.models import explicit_attention

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), int64 labels (B,)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> mean loss


@dataclass
class AnalysisResult:
    metrics: dict                                   # JSON-serializable
    figures: dict = field(default_factory=dict)     # name -> matplotlib Figure


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss the geometry is measured on (no label smoothing: the paper's
    Hessian is that of the plain cross-entropy)."""
    return F.cross_entropy(logits, labels)


@contextlib.contextmanager
def measurement_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm running statistics, no dropout, as the paper measures) and
    the explicit path of vitsam attention layers (a no-op for other modules): the fused
    attention kernel has no double backward and no forward-mode AD, which Hessian-vector
    products need. The model's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with explicit_attention(model):
            yield model
    finally:
        model.train(was_training)


def batch_weights(batches: Sequence[Batch]) -> list[float]:
    """Each batch's share of all examples: the loss over a fixed list of batches is the
    size-weighted mean of the per-batch mean losses, i.e. the mean over all examples."""
    sizes = [len(labels) for _, labels in batches]
    total = sum(sizes)
    return [s / total for s in sizes]


def take(batches: Sequence[Batch], examples: int) -> list[Batch]:
    """The first ``examples`` examples of a list of batches (the last one cut short)."""
    out, left = [], examples
    for images, labels in batches:
        if left <= 0:
            break
        out.append((images[:left], labels[:left]))
        left -= len(labels)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn = cross_entropy,
             params: dict | None = None) -> tuple[float, float]:
    """(mean loss, error rate) over the batches, optionally at other parameter values
    (``params``: name -> tensor, passed to ``functional_call``; the model is not copied)."""
    loss = error = 0.0
    with measurement_mode(model):
        for weight, (images, labels) in zip(batch_weights(batches), batches):
            logits = (torch.func.functional_call(model, params, (images,)) if params
                      else model(images))
            loss += weight * float(loss_fn(logits, labels))
            error += weight * float((logits.argmax(-1) != labels).float().mean())
    return loss, error


def disjoint_subsets(batches: Sequence[Batch], parts: int) -> list[list[Batch]]:
    """``parts`` disjoint, equal-sized, consecutive pieces of the examples (the remainder
    left out), each as one batch."""
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    size = len(labels) // parts
    if size < 1:
        raise VitsamError(f"cannot split {len(labels)} examples into {parts} disjoint subsets")
    return [[(images[i * size:(i + 1) * size], labels[i * size:(i + 1) * size])] for i in range(parts)]


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, and the batch-means standard error sd / sqrt(S),
    the usual estimate of the uncertainty of the statistic on the union of S disjoint
    subsets (it treats the statistic as roughly an average over examples)."""
    values = np.asarray(values, dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return {"values": values.tolist(), "mean": float(values.mean()), "sd": sd,
            "stderr": sd / math.sqrt(len(values)), "min": float(values.min()), "max": float(values.max())}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
