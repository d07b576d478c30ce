"""Build the optimizer a config asks for: AdamW or SGD, wrapped in the SAM family when
rho > 0 (``sam.variant``: SAM, or ASAM with ``sam.adaptive``; GSAM; LookSAM).

Weight decay applies to weights only (the paper's recipe: AdamW, weight decay 0.3 for
ViT / Mixer; SGD with momentum for ResNets): biases, normalization scales and the
names a model lists in ``no_weight_decay()`` (class token, position embedding) get none.
"""
from __future__ import annotations

import torch
from torch import nn

from vitsam.config import OptimConfig, SAMConfig
from vitsam.errors import VitsamError, unknown_choice
from vitsam.optim.sam import GSAM, SAM, LookSAM

OPTIMIZERS = ("adamw", "sgd")
SAM_VARIANTS = ("sam", "gsam", "looksam")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the rest (ndim <= 1 or listed by the model)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def fused(optimizer_class, groups: list[dict], **kwargs) -> torch.optim.Optimizer:
    """The fused (one-kernel) implementation where this device and dtype have one: the
    optimizer step alone ~5x cheaper on a CPU (benchmarks/bench_throughput.py); the
    per-tensor one otherwise."""
    try:
        return optimizer_class(groups, **kwargs, fused=True)
    except (RuntimeError, ValueError):
        return optimizer_class(groups, **kwargs)


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig,
                    sam_cfg: SAMConfig) -> torch.optim.Optimizer:
    """The base optimizer when ``sam.rho == 0`` (bit-identical to no SAM), else the
    ``sam.variant`` of the SAM family around it."""
    groups = parameter_groups(model, optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        base = fused(torch.optim.AdamW, groups, lr=optim_cfg.lr, betas=optim_cfg.betas,
                     weight_decay=optim_cfg.weight_decay)
    elif optim_cfg.name == "sgd":
        if optim_cfg.nesterov and optim_cfg.momentum <= 0:
            raise VitsamError(f"optim.nesterov needs optim.momentum > 0, got {optim_cfg.momentum}")
        base = fused(torch.optim.SGD, groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                     nesterov=optim_cfg.nesterov, weight_decay=optim_cfg.weight_decay)
    else:
        raise unknown_choice("optim.name", optim_cfg.name, OPTIMIZERS)
    if sam_cfg.rho == 0:
        return base
    common = dict(rho=sam_cfg.rho, adaptive=sam_cfg.adaptive, eta=sam_cfg.eta, eps=sam_cfg.eps,
                  per_rank=sam_cfg.perturbation == "per_rank")
    if sam_cfg.variant == "sam":
        return SAM(base.param_groups, base, **common)
    if sam_cfg.variant == "gsam":
        # rho_t follows the schedule from rho at the peak lr down to rho_min at its floor
        return GSAM(base.param_groups, base, rho_min=sam_cfg.rho_min, alpha=sam_cfg.gsam_alpha,
                    lr_min=optim_cfg.lr * optim_cfg.min_lr_ratio, lr_max=optim_cfg.lr, **common)
    if sam_cfg.variant == "looksam":
        return LookSAM(base.param_groups, base, k=sam_cfg.k, alpha=sam_cfg.looksam_alpha, **common)
    raise unknown_choice("sam.variant", sam_cfg.variant, SAM_VARIANTS)
