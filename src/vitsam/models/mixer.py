"""MLP-Mixer (Tolstikhin et al. 2021) as trained in the paper (its model table: Mixer-S and
Mixer-B at patch sizes 32, 16, 8).

A per-patch linear embedding (a strided conv), then blocks of
LayerNorm -> token-mixing MLP (across patches, shared over channels) and
LayerNorm -> channel-mixing MLP (across channels, shared over patches), each
residual; a final LayerNorm, global average pooling over patches and a linear
head. This is the authors' flax module (google-research/vision_transformer,
``vit_jax/models_mixer.py`` at commit c6de1e5378c9831a8477feb30994971bdc409e46):
LayerNorm epsilon 1e-6, GELU in flax's tanh approximation (``gelu="exact"`` for
timm's form), inputs scaled to [-1, 1]; their module has no dropout, ours adds
optional dropout / drop-path (off by default). Initialization follows big_vision:
xavier-uniform dense kernels, zero head.
"""
from __future__ import annotations

import torch
from torch import nn

from vitsam.models.base import VisionModel
from vitsam.models.layers import DropPath, Mlp, PatchEmbed, check_image_size, drop_path_rates, init_weights


class MixerBlock(nn.Module):
    def __init__(self, num_tokens: int, dim: int, tokens_mlp_dim: int, channels_mlp_dim: int,
                 drop: float = 0.0, drop_path: float = 0.0, gelu: str = "tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mixing = Mlp(num_tokens, tokens_mlp_dim, drop=drop, gelu_form=gelu)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mixing = Mlp(dim, channels_mlp_dim, drop=drop, gelu_form=gelu)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        mixed = self.token_mixing(self.norm1(x).transpose(1, 2))  # MLP over N on (B, D, N)
        x = x + self.drop_path(mixed.transpose(1, 2))
        return x + self.drop_path(self.channel_mixing(self.norm2(x)))


class MlpMixer(VisionModel):
    family = "mixer"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 patch_size: int = 16, width: int = 512, depth: int = 8,
                 tokens_mlp_dim: int = 256, channels_mlp_dim: int = 2048,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, gelu: str = "tanh",
                 mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__(num_classes, in_chans, img_size, mean, std)
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        num_tokens = self.patch_embed.num_tokens
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            MixerBlock(num_tokens, width, tokens_mlp_dim, channels_mlp_dim, drop_rate, rate, gelu)
            for rate in rates)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.zeros_(self.head.weight)  # big_vision: zero head, logits start at 0
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalized images (B, C, H, W) -> tokens after the last block (B, N, D)."""
        check_image_size(x, self.img_size, type(self).__name__)
        x = self.patch_embed(x)  # (B, C, H, W) -> (B, N, D)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, N, D) -> pooled features (B, D) or logits (B, K)."""
        x = self.norm(features).mean(dim=1)
        return x if pre_logits else self.head(x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": self.params_matching(r"patch_embed\."),
            "token_mixing": self.params_matching(r"blocks\.\d+\.token_mixing\."),
            "channel_mixing": self.params_matching(r"blocks\.\d+\.channel_mixing\."),
            "head": self.params_matching(r"norm\.", r"head\."),
            **self.block_groups(),
        }
