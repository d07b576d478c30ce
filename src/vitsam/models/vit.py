"""Vision Transformer (Dosovitskiy et al. 2021) as trained in the paper (its model table:
ViT-S and ViT-B at patch sizes 32, 16, 14, 8).

The forward pass is that of the authors' flax module (google-research/vision_transformer,
``vit_jax/models_vit.py`` at commit c6de1e5378c9831a8477feb30994971bdc409e46), checked
detail by detail, with the authors' choice as the default of every option:

- inputs scaled to [-1, 1] (``mean``/``std`` 0.5; their input pipeline divides by 127.5);
- a patch_size x patch_size, patch-strided convolution; tokens in row-major patch order;
- a class token (``classifier="token"``) or none, pooling by the mean over the tokens
  (``"gap"``, their ``*-gap-norep`` configurations), after the final LayerNorm;
- a learned position embedding added to all tokens, class token included;
- pre-norm blocks: LayerNorm (epsilon 1e-6, flax's default), multi-head attention with
  logits q k^T / sqrt(head_dim), residual; LayerNorm, Dense -> GELU -> Dense, residual;
- GELU in flax's default tanh approximation (``gelu="tanh"``; ``"exact"`` is timm's form);
- an optional representation layer (``representation_size``: Dense + tanh, their
  ``pre_logits``) before the linear head.

Initialization follows the reference JAX code (google-research/vision_transformer,
big_vision): xavier-uniform dense kernels, LeCun-normal patch embedding, position
embedding N(0, 0.02), zero class token, zero-initialized head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError, unknown_choice
from vitsam.models.base import VisionModel
from vitsam.models.layers import (Attention, DropPath, Mlp, PatchEmbed, check_image_size, drop_path_rates,
                                  init_weights)

CLASSIFIERS = ("token", "gap")


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, gelu: str = "tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, drop=drop, gelu_form=gelu)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(VisionModel):
    family = "vit"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 patch_size: int = 16, width: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_dim: int = 1536, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, classifier: str = "token",
                 representation_size: int | None = None, gelu: str = "tanh",
                 mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__(num_classes, in_chans, img_size, mean, std)
        if classifier not in CLASSIFIERS:
            raise unknown_choice("ViT classifier", classifier, CLASSIFIERS)
        self.patch_size = patch_size
        self.classifier = classifier
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        self.num_prefix_tokens = 1 if classifier == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if self.num_prefix_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_tokens, width))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_dim, drop_rate, attn_drop_rate, rate, gelu) for rate in rates)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        # The authors' pre_logits: Dense + tanh when representation_size is set, else identity.
        self.pre_logits = (nn.Sequential(nn.Linear(width, representation_size), nn.Tanh())
                           if representation_size else nn.Identity())
        self.head = nn.Linear(representation_size or width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        nn.init.zeros_(self.head.weight)  # big_vision: zero head, logits start at 0
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalized images (B, C, H, W) -> tokens after the last block (B, prefix + N, D)."""
        check_image_size(x, self.img_size, type(self).__name__)
        x = self.patch_embed(x)  # (B, C, H, W) -> (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, prefix + N, D) -> pooled features (B, representation or D) or logits (B, K)."""
        if self.classifier == "token":
            x = self.norm(features[:, 0])  # LayerNorm is per token: normalize only the class token
        else:
            x = self.norm(features).mean(dim=1)
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": self.params_matching(r"patch_embed\.", "cls_token", "pos_embed"),
            "attention": self.params_matching(r"blocks\.\d+\.attn\."),
            "mlp": self.params_matching(r"blocks\.\d+\.mlp\."),
            "head": self.params_matching(r"norm\.", r"pre_logits\.", r"head\."),
            **self.block_groups(),
        }

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())


def resize_pos_embed(pos_embed: torch.Tensor, grid: int | tuple[int, int], num_prefix_tokens: int = 1,
                     mode: str = "bicubic") -> torch.Tensor:
    """Position embeddings for another patch grid: (1, prefix + g*g, D) -> (1, prefix + h*w, D).

    The prefix (class token) rows are kept as they are; the g x g grid rows, in row-major
    patch order, are interpolated over the grid (timm's ``resample_abs_pos_embed`` uses
    bicubic too; the authors' ``vit_jax.checkpoint.interpolate_posembed`` zooms with
    scipy, order 1, which ``mode="bilinear"`` approximates). Used when a checkpoint meets
    another image size, for the paper's transfer experiments as for imports."""
    new_h, new_w = (grid, grid) if isinstance(grid, int) else grid
    prefix, cells = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(cells.shape[1])
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or side * side != cells.shape[1]:
        raise VitsamError(f"position embedding of shape {tuple(pos_embed.shape)} is not (1, "
                          f"{num_prefix_tokens} + g*g, D) for a square patch grid")
    if (side, side) == (new_h, new_w):
        return pos_embed
    width = cells.shape[-1]
    cells = cells.reshape(1, side, side, width).permute(0, 3, 1, 2)  # (1, g*g, D) -> (1, D, g, g)
    cells = F.interpolate(cells.float(), size=(new_h, new_w), mode=mode, align_corners=False)
    cells = cells.permute(0, 2, 3, 1).reshape(1, new_h * new_w, width)  # (1, D, h, w) -> (1, h*w, D)
    return torch.cat([prefix, cells.to(pos_embed.dtype)], dim=1)
