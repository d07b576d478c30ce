"""Training objectives: what turns a batch into a loss. The one training loop runs every
objective; a new regime (adversarial, contrastive training) adds an objective, not a loop.

An objective has three hooks, called by the loop in this order each step:

- ``prepare(model, batch, generator) -> batch``: once per step, BEFORE the optimizer's
  passes, for everything random or expensive that both SAM passes must share (the
  mixup draw, adversarial examples): SAM then sees the identical batch at w and at
  w + e (docs/paper.md, SAM pitfall 5). ``generator`` is seeded by (seed, epoch, step,
  rank), so a resumed run draws the same;
- ``loss(model, batch) -> (mean loss, logits or None)``: inside every pass;
- ``after_step(model)``: after the update (e.g. a momentum encoder's moving average).

An objective is an ``nn.Module``: extra trainable heads (contrastive projection and
prediction MLPs) are its parameters, and ``TrainingModule`` binds it to the model so
the optimizer, DDP and checkpoints see both.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import unknown_choice

Batch = tuple[torch.Tensor, ...]   # batch-first tensors, e.g. (images (B, C, H, W), labels (B,))


class Objective(nn.Module):
    """Base class; subclasses set ``name`` and implement ``loss``."""

    name: ClassVar[str] = ""

    def prepare(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        pass


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (logits, targets) -> mean loss


class Classification(Objective):
    """Cross-entropy of the model's logits: (images, labels) with int64 labels (B,) or
    soft targets (B, K) (after mixup); ``label_smoothing`` as in torch. ``criterion``
    replaces the cross-entropy by any (logits, targets) -> mean loss."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0, criterion: LossFn | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.criterion = criterion or self.cross_entropy

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        logits = model(images)
        return self.criterion(logits, targets), logits


class TrainingModule(nn.Module):
    """The model and its objective as one module: what DDP wraps and the optimizer
    updates. ``forward(batch) -> (mean loss, logits or None)``."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.objective.loss(self.model, batch)

    def no_weight_decay(self) -> set[str]:
        """The model's exemptions (class token, position embedding), under its prefix."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{name}" for name in names}


def classification(cfg, model: nn.Module) -> Objective:
    return Classification(label_smoothing=cfg.train.label_smoothing)


# name (config.ObjectiveName) -> builder(cfg, model) -> Objective
OBJECTIVES: dict[str, Callable] = {"classification": classification}


def build_objective(cfg, model: nn.Module) -> Objective:
    """The objective ``cfg.train.objective`` for ``model`` (its heads sized from the model)."""
    if cfg.train.objective not in OBJECTIVES:
        raise unknown_choice("train.objective", cfg.train.objective, OBJECTIVES)
    return OBJECTIVES[cfg.train.objective](cfg, model)
