"""Activation sparsity (the paper's Sec. 4.3): per block, the share of MLP hidden units
whose post-GELU activation is positive on training images. SAM models activate fewer
neurons, especially in the first blocks.

The hidden activations come from the model contract's ``ActivationProbe`` modules via
``vitsam.models.capture``; each batch is counted and dropped, so memory stays at one
batch's activations.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from vitsam.analysis import AnalysisResult, Batch, LossFn, cross_entropy, measurement_mode, take
from vitsam.models import capture


def positive_fraction(activations: torch.Tensor) -> float:
    """Share of the entries that are > 0 (a unit on one token of one image is one entry)."""
    return float((activations > 0).float().mean())


@torch.no_grad()
def activation_sparsity(model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
    """{MLP name: share of positive hidden activations} over all images, tokens and units,
    in model order (e.g. "blocks.0.mlp", or "blocks.0.token_mixing" and
    "blocks.0.channel_mixing" for a Mixer). Empty for models without MLP probes."""
    positive: dict[str, float] = {}
    total: dict[str, int] = {}
    with measurement_mode(model):
        for images, _ in batches:
            with capture(model, hidden=True) as rec:
                model(images)
            for name, hidden in rec.hidden.items():
                positive[name] = positive.get(name, 0.0) + float((hidden > 0).sum())
                total[name] = total.get(name, 0) + hidden.numel()
    return {name: positive[name] / total[name] for name in positive}


def by_kind(fractions: dict[str, float]) -> dict[str, list[float]]:
    """{"blocks.3.mlp": f, ...} -> {"mlp": [f_block1, f_block2, ...]}: one curve per kind
    of MLP (the Mixer has two per block), indexed by block."""
    curves: dict[str, list[float]] = {}
    for name, fraction in fractions.items():
        match = re.search(r"\.(\d+)\.(.+)$", name)
        kind = match.group(2) if match else name
        curves.setdefault(kind, []).append(fraction)
    return curves


def plot_sparsity(curves: dict[str, list[float]], title: str = "Activation sparsity"):
    """label -> per-block share of positive activations."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o", label=label)
    ax.set_xlabel("block")
    ax.set_ylabel("activated neurons (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


@dataclass
class ActivationSparsity:
    """Share of positive MLP hidden units per block on ``examples`` training images."""
    name: ClassVar[str] = "sparsity"
    examples: int = 256

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        fractions = activation_sparsity(model, take(batches, self.examples))
        if not fractions:
            return AnalysisResult({"skipped": "the model has no MLP activation probes"})
        curves = by_kind(fractions)
        return AnalysisResult({"positive_fraction": fractions, "per_block": curves},
                              {"sparsity": plot_sparsity(curves)})
