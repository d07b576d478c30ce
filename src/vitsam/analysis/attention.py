"""Attention maps (the paper's attention figure): the class token's attention over the
patches in the last block, per head and averaged, and attention rollout (Abnar and
Zuidema 2020), which follows attention through all blocks and the residual stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import AnalysisResult, Batch, LossFn, cross_entropy, measurement_mode
from vitsam.errors import VitsamError
from vitsam.models import capture
from vitsam.models.base import AttentionProbe


def cls_attention(attention: torch.Tensor) -> torch.Tensor:
    """(B, heads, 1 + P, 1 + P) -> the class token's (index 0) attention to the P patches,
    (B, heads, P)."""
    return attention[:, :, 0, 1:]


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout over the blocks, (B, N, N): per block average the heads, add the identity
    for the residual connection and renormalize the rows, A_l = (mean_h A_lh + I) / 2,
    then multiply from the first block up, R = A_L ... A_2 A_1."""
    rollout = None
    for attention in attentions:  # (B, heads, N, N), first block first
        mixed = attention.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def patch_grid(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise VitsamError(f"attention maps need a class token and a square patch grid; "
                          f"got {num_patches} tokens besides the first")
    return side


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """For images (B, C, H, W): the last block's class-token attention per head
    (B, heads, g, g) and averaged over heads (B, g, g), and the class token's row of the
    rollout (B, g, g), each map renormalized to sum to 1 over the patches."""
    with measurement_mode(model), capture(model, attention=True) as rec:
        model(images)
    if not rec.attention:
        raise VitsamError(f"{type(model).__name__} has no attention layers to draw")
    last = cls_attention(rec.attention[-1])  # (B, heads, P)
    side = patch_grid(last.shape[-1])
    rollout = attention_rollout(rec.attention)[:, 0, 1:]  # (B, P)

    def grid(maps: torch.Tensor) -> np.ndarray:  # (..., P) -> (..., g, g)
        maps = maps / maps.sum(dim=-1, keepdim=True)
        return maps.reshape(*maps.shape[:-1], side, side).float().cpu().numpy()

    return {"per_head": grid(last), "mean": grid(last.mean(dim=1)), "rollout": grid(rollout)}


def _overlay(ax, image: np.ndarray, heat: np.ndarray) -> None:
    """image (C, H, W) in [0, 1] in gray, the (g, g) map stretched over it."""
    ax.imshow(image.mean(axis=0), cmap="gray", vmin=0, vmax=1)
    ax.imshow(heat, cmap="jet", alpha=0.45, extent=(-0.5, image.shape[2] - 0.5, image.shape[1] - 0.5, -0.5),
              interpolation="bilinear")
    ax.axis("off")


def plot_attention(images: np.ndarray, maps: dict[str, dict[str, np.ndarray]], per_head: bool = False):
    """One row per image: the image, then for each label (e.g. "ViT", "ViT-SAM") the
    head-averaged class-token map and the rollout, or every head when ``per_head``."""
    import matplotlib.pyplot as plt

    def panels(entry):
        if per_head:
            return [(f"head {h + 1}", entry["per_head"][:, h]) for h in range(entry["per_head"].shape[1])]
        return [("cls attention", entry["mean"]), ("rollout", entry["rollout"])]

    columns = [("input", None)] + [(f"{label}: {what}" if label else what, heat) for label, entry in maps.items()
                                   for what, heat in panels(entry)]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.6 * len(columns), 1.6 * len(images)),
                             squeeze=False)
    for row, image in enumerate(images):
        for col, (title, heat) in enumerate(columns):
            ax = axes[row, col]
            if heat is None:
                ax.imshow(image.mean(axis=0), cmap="gray", vmin=0, vmax=1)
                ax.axis("off")
            else:
                _overlay(ax, image, np.asarray(heat)[row])
            if row == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


@dataclass
class AttentionMaps:
    """Class-token attention and rollout on the first ``images`` training images; the
    images and maps are kept in the results so reports can draw runs side by side."""
    name: ClassVar[str] = "attention"
    images: int = 4

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        images = torch.cat([x for x, _ in batches])[: self.images]
        if not any(isinstance(m, AttentionProbe) for m in model.modules()):
            return AnalysisResult({"skipped": "the model has no attention layers"})
        if getattr(model, "num_prefix_tokens", 1) == 0:
            return AnalysisResult({"skipped": "the model pools by the token mean (classifier='gap'): it has no "
                                              "class token whose attention could be drawn"})
        maps = attention_maps(model, images)
        pixels = images.float().cpu().numpy()
        metrics = {"images": pixels.round(4).tolist(),
                   **{key: value.round(5).tolist() for key, value in maps.items()}}
        figures = {"attention": plot_attention(pixels, {"": maps}),
                   "attention_heads": plot_attention(pixels, {"": maps}, per_head=True)}
        return AnalysisResult(metrics, figures)

