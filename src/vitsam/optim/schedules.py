"""Learning-rate schedules: linear warmup from 0, then linear / cosine decay or constant.

The paper trains ViT / Mixer with 10k warmup steps then linear decay, ResNets with 5k
warmup then linear decay (docs/paper.md, "Training recipe").
"""
from __future__ import annotations

import functools
import math

import torch

from vitsam.config import OptimConfig
from vitsam.errors import VitsamError, unknown_choice

SCHEDULES = ("linear", "cosine", "constant")


def lr_lambda(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear",
              min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise unknown_choice("optim.schedule", schedule, SCHEDULES)
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def warmup_steps(optim_cfg: OptimConfig, total_steps: int) -> int:
    """``optim.warmup_steps``, else ``optim.warmup_fraction`` of the run."""
    return optim_cfg.warmup_steps or round(optim_cfg.warmup_fraction * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (state_dict-able for resuming)."""
    if total_steps <= 0:
        raise VitsamError(f"the schedule needs a positive number of steps, got {total_steps}")
    lr_lambda(0, total_steps, 0, optim_cfg.schedule)  # reject an unknown schedule now
    multiplier = functools.partial(lr_lambda, total_steps=total_steps,
                                   warmup_steps=warmup_steps(optim_cfg, total_steps),
                                   schedule=optim_cfg.schedule,
                                   min_lr_ratio=optim_cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
