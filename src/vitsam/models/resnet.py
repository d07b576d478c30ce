"""ResNet v1.5 with BatchNorm (He et al. 2016; stride on the 3x3 conv), the paper's baseline.

``width_factor`` multiplies every channel width, the stem included: ResNet-50x2 has
four times the parameters of ResNet-50 in its convolutions (98M vs 25M; the paper's
model table lists ResNet-50x2 beside ResNet-50).
``stem="cifar"`` swaps the 7x7/2 conv + max-pool for one 3x3/1 conv, for small images.
Convolutions start Kaiming-normal (fan out); the head starts at zero as for ViT and Mixer.

Weights and feature maps are kept channels-last (NHWC): oneDNN's CPU convolutions run
resnet_tiny's training step 1.5x faster that way than in NCHW (benchmarks/bench_throughput.py),
and cuDNN's tensor-core kernels take NHWC natively. Only the memory layout changes: shapes,
values, ``state_dict`` keys and saved weights are those of the NCHW model.
"""
from __future__ import annotations

import torch
from torch import nn

from vitsam.errors import VitsamError, unknown_choice
from vitsam.models.base import VisionModel
from vitsam.models.layers import DropPath, drop_path_rates


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch)]


def basic_branch(in_ch: int, width: int, stride: int) -> nn.Sequential:
    """conv3x3 (carries the stride) -> conv3x3; output width channels."""
    return nn.Sequential(*conv_bn(in_ch, width, 3, stride), nn.ReLU(inplace=True),
                         *conv_bn(width, width, 3))


def bottleneck_branch(in_ch: int, width: int, stride: int) -> nn.Sequential:
    """1x1 reduce -> 3x3 (carries the stride: v1.5) -> 1x1 expand; output 4 * width channels."""
    return nn.Sequential(*conv_bn(in_ch, width, 1), nn.ReLU(inplace=True),
                         *conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                         *conv_bn(width, 4 * width, 1))


class ResidualBlock(nn.Module):
    """relu(shortcut(x) + drop_path(residual(x))); the shortcut projects (1x1 conv + BN)
    when the residual branch changes the shape."""

    def __init__(self, residual: nn.Sequential, in_ch: int, stride: int, drop_path: float = 0.0):
        super().__init__()
        out_ch = residual[-1].num_features
        self.residual = residual
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch
                         else nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride)))
        self.drop_path = DropPath(drop_path)
        self.act = nn.ReLU(inplace=True)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.residual(x)))


BRANCHES = {"basic": basic_branch, "bottleneck": bottleneck_branch}
STEMS = ("imagenet", "cifar")


class ResNet(VisionModel):
    family = "resnet"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 block: str = "bottleneck", layers: tuple = (3, 4, 6, 3),
                 widths: tuple = (64, 128, 256, 512), width_factor: int = 1,
                 stem: str = "imagenet", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__(num_classes, in_chans, img_size, mean, std)
        if block not in BRANCHES:
            raise unknown_choice("ResNet block", block, BRANCHES)
        if stem not in STEMS:
            raise unknown_choice("ResNet stem", stem, STEMS)
        if len(layers) != len(widths):
            raise VitsamError(f"ResNet needs one width per stage: layers={layers}, widths={widths}")
        branch = BRANCHES[block]
        widths = [w * width_factor for w in widths]
        self.stem = self._make_stem(stem, in_chans, widths[0])
        rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        blocks, self.block_stage, in_ch = [], [], widths[0]
        for stage, (num_blocks, width) in enumerate(zip(layers, widths)):
            for i in range(num_blocks):
                stride = 2 if i == 0 and stage > 0 else 1  # downsample at each new stage
                blocks.append(ResidualBlock(branch(in_ch, width, stride), in_ch, stride, next(rates)))
                self.block_stage.append(stage + 1)
                in_ch = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(in_ch, num_classes)
        self.reset_parameters()
        self.to(memory_format=torch.channels_last)  # 4-D conv weights only; see the module docstring

    @staticmethod
    def _make_stem(stem: str, in_chans: int, width: int) -> nn.Sequential:
        if stem == "cifar":
            return nn.Sequential(*conv_bn(in_chans, width, 3), nn.ReLU(inplace=True))
        return nn.Sequential(*conv_bn(in_chans, width, 7, 2), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalized images (B, C, H, W) -> feature maps of the last block (B, C', h, w)."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """maps (B, C', h, w) -> globally pooled features (B, C') or logits (B, K)."""
        x = features.mean(dim=(2, 3))
        return x if pre_logits else self.head(self.head_drop(x))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        stages: dict[str, list[nn.Parameter]] = {}
        for stage, block in zip(self.block_stage, self.blocks):
            stages.setdefault(f"stage{stage}", []).extend(block.parameters())
        return {
            "embedding": self.params_matching(r"stem\."),
            "head": self.params_matching(r"head\."),
            **stages,
            **self.block_groups(),
        }
