"""Vision Transformer (Dosovitskiy et al. 2021) as trained in the paper (PAPER.md, "Models").

Patch embedding (a strided conv), a class token, a learned position embedding,
pre-norm blocks (LayerNorm eps 1e-6, multi-head self-attention, GELU MLP), a final
LayerNorm and a linear head on the class token. Initialization follows the
reference JAX code (google-research/vision_transformer, big_vision): xavier-uniform
dense kernels, LeCun-normal patch embedding, position embedding N(0, 0.02), zero
class token, zero-initialized head.
"""
from __future__ import annotations

import torch
from torch import nn

from vitsam.models.base import VisionModel
from vitsam.models.layers import (Attention, DropPath, Mlp, PatchEmbed, check_image_size, drop_path_rates,
                                  init_weights)


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(VisionModel):
    family = "vit"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 patch_size: int = 16, width: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_dim: int = 1536, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__(num_classes, in_chans, img_size, mean, std)
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        num_patches = self.patch_embed.num_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_dim, drop_rate, attn_drop_rate, rate) for rate in rates)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.cls_token)
        nn.init.zeros_(self.head.weight)  # big_vision: zero head, logits start at 0
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalized images (B, C, H, W) -> tokens after the last block (B, 1 + N, D)."""
        check_image_size(x, self.img_size, type(self).__name__)
        x = self.patch_embed(x)  # (B, C, H, W) -> (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, 1 + N, D) -> normalized class token (B, D) or logits (B, K)."""
        x = self.norm(features[:, 0])  # LayerNorm is per token: normalize only the class token
        return x if pre_logits else self.head(x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": self.params_matching(r"patch_embed\.", "cls_token", "pos_embed"),
            "attention": self.params_matching(r"blocks\.\d+\.attn\."),
            "mlp": self.params_matching(r"blocks\.\d+\.mlp\."),
            "head": self.params_matching(r"norm\.", r"head\."),
            **self.block_groups(),
        }

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}
