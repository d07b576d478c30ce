"""The one model contract every family follows (DESIGN.md, "Contracts worth keeping").

Analyzers and evaluators depend only on this class, never on one architecture:

- inputs are images in [0, 1], shape (B, C, H, W); the model normalizes them itself
  (``mean``/``std`` buffers, default 0.5/0.5 so the network sees [-1, 1] as in the
  authors' ViT code). Corruptions and PGD therefore work in pixel units directly.
- ``forward_features(x)`` -> unpooled features: tokens (B, N, D) or maps (B, C, h, w);
- ``forward_head(features, pre_logits=False)`` -> pooled features (B, D) or logits (B, K);
- ``blocks``: the ordered residual blocks (``nn.ModuleList``);
- ``parameter_groups()``: named lists of parameters (embedding, attention / token_mixing,
  mlp / channel_mixing, head, block1..blockL; ResNet: embedding, head, stage1..stageS,
  block1..blockL) used by the per-block Hessian table (the paper's "dominant eigenvalue of
  the Hessian's diagonal blocks" table); embedding,
  the blocks and head partition the parameters, and head holds exactly what
  ``forward_head`` uses;
- ``no_weight_decay()``: parameter names exempt from weight decay besides ``p.ndim <= 1``;
- ``AttentionProbe`` / ``ActivationProbe``: identity modules placed where attention
  probabilities and MLP hidden activations are formed, so ``vitsam.models.capture``
  can record them with forward hooks without editing the model.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from vitsam.errors import VitsamError


class AttentionProbe(nn.Identity):
    """Identity on attention probabilities (B, heads, N, N); a hook point for capture."""


class ActivationProbe(nn.Identity):
    """Identity on MLP hidden activations (B, ..., hidden) after the nonlinearity."""


class VisionModel(nn.Module):
    """Base class: input normalization + the contract above. Subclasses define
    ``blocks``, ``forward_features``, ``forward_head`` and ``parameter_groups``."""

    family: str = ""
    blocks: nn.ModuleList

    def __init__(self, num_classes: int, in_chans: int, img_size: int,
                 mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(in_chans).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(in_chans).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t.clone(), persistent=False)
        self.register_buffer("std", std_t.clone(), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise VitsamError(f"{type(self).__name__} takes images of shape (B, {self.in_chans}, H, W), "
                              f"got {tuple(images.shape)}; create it with in_chans=<channels>")
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of parameters exempt from weight decay besides biases and norm
        weights (which optimizers exempt by ``p.ndim <= 1``)."""
        return set()

    def params_matching(self, *patterns: str) -> list[nn.Parameter]:
        """Parameters whose name starts with one of the regex ``patterns``, in model order."""
        regex = re.compile("|".join(f"(?:{p})" for p in patterns))
        return [p for name, p in self.named_parameters() if regex.match(name)]

    def block_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"block1": [...], ..., "blockL": [...]}: the paper's per-block Hessian columns."""
        return {f"block{k}": list(block.parameters()) for k, block in enumerate(self.blocks, 1)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(self.normalize(images)))
