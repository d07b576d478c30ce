"""Building blocks shared by the ViT and Mixer families: MLP, attention, stochastic depth, init.

Randomness (dropout, drop-path) draws from torch's global RNG only, so a SAM step can
replay the RNG state and give both of its passes the same masks (both SAM passes must
see one dropout draw, or the ascent direction belongs to another network).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError, unknown_choice
from vitsam.models.base import ActivationProbe, AttentionProbe


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
        mask = x.new_empty(mask_shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Conv2d):
    """Non-overlapping patch x patch projection to ``width`` channels (the ViT and Mixer
    stems): images (B, C, H, W) -> tokens (B, N, width), N = (H / patch)^2."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, width: int):
        if img_size % patch_size:
            raise VitsamError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        super().__init__(in_chans, width, patch_size, stride=patch_size)
        self.num_tokens = (img_size // patch_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic depth grows linearly from 0 to ``max_rate`` over the blocks (Huang et al. 2016)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


# GELU forms: the authors' flax models call ``flax.linen.gelu``, whose default is the tanh
# approximation (jax.nn.gelu(approximate=True)); timm and torch default to the exact erf form.
GELU_FORMS = {"tanh": "tanh", "exact": "none"}


def gelu(form: str) -> nn.GELU:
    if form not in GELU_FORMS:
        raise unknown_choice("gelu form", form, GELU_FORMS)
    return nn.GELU(approximate=GELU_FORMS[form])


class Mlp(nn.Module):
    """Linear -> GELU -> probe -> dropout -> Linear -> dropout, on the last axis.

    The ActivationProbe sees the post-GELU hidden units: the paper's activation
    sparsity analysis counts the positive ones per block ("sparser active neurons in the
    first few layers", Chen et al. 2022)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, gelu_form: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = gelu(gelu_form)
        self.probe = ActivationProbe()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.probe(self.act(self.fc1(x))))
        return self.drop2(self.fc2(x))


class Attention(nn.Module):
    """Multi-head self-attention.

    Two paths with the same output: the fused ``scaled_dot_product_attention``
    kernel (fast, used when nothing needs the probabilities) and an explicit
    softmax(q k^T / sqrt(d)) path that passes the probabilities through an
    AttentionProbe and supports double backward (Hessian-vector products).
    ``explicit`` is switched by ``explicit_attention`` and ``capture``; bf16 on a CPU
    always takes the explicit path: torch's CPU flash-attention backward in bf16 makes
    vit_tiny's training step 3x slower than fp32, the explicit path 1.3x faster
    (benchmarks/bench_throughput.py --bf16, torch 2.13)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise VitsamError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.probe = AttentionProbe()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.explicit = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # (B, N, 3D) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        if self.explicit or (q.dtype == torch.bfloat16 and q.device.type == "cpu"):
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, heads, N, N)
            attn = self.probe(attn.softmax(dim=-1))
            out = F.dropout(attn, drop, training=self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, heads, N, hd) -> (B, N, D)
        return self.proj_drop(self.proj(out))


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """flax's lecun_normal: truncated normal (at 2 std) with variance 1 / fan_in."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566  # undo the variance lost to truncation
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_weights(model: nn.Module) -> None:
    """big_vision's initialization for ViT and Mixer: xavier-uniform dense kernels,
    zero biases, LeCun-normal patch embedding. A fused qkv kernel (3D, D) is scaled
    as three separate (D, D) kernels, as in the reference implementation."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_out = module.out_features // 3 if name.endswith("qkv") else module.out_features
            bound = math.sqrt(6.0 / (module.in_features + fan_out))
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            lecun_normal_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def check_image_size(x: torch.Tensor, img_size: int, model_name: str) -> None:
    """Patch models have a fixed token count: reject other image sizes clearly."""
    if x.shape[-2:] != (img_size, img_size):
        raise VitsamError(f"{model_name} was built for {img_size}x{img_size} images, got "
                          f"{tuple(x.shape[-2:])}; create it with img_size={x.shape[-1]}")
