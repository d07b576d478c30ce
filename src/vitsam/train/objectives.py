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
the optimizer, DDP and checkpoints see both. ``begin(total_steps)`` tells it the length
of the run (MoCo's momentum schedule).

The objectives (``train.objective``):

- ``classification``: cross-entropy; with ``augment.*`` the paper's "AUG" baseline
  (RandAugment + mixup, ``vitsam.data.augment``) drawn in ``prepare``;
- ``adversarial``: PGD examples (Madry et al. 2018) made in ``prepare`` against the
  current weights, then cross-entropy on them: with SAM, the sharpness of the
  adversarial loss is minimised (the paper's adversarial-training table);
- ``contrastive``: MoCo v3 (Chen, Xie, He 2021): two views, a momentum encoder,
  projection and prediction heads, symmetric InfoNCE.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vitsam.data.augment import StrongAugment, contrastive_view
from vitsam.errors import VitsamError, unknown_choice

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

    def begin(self, total_steps: int) -> None:
        """The run's length in optimizer steps, before the first step (and on resume)."""


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (logits, targets) -> mean loss


class Classification(Objective):
    """Cross-entropy of the model's logits: (images, labels) with int64 labels (B,) or
    soft targets (B, K) (after mixup); ``label_smoothing`` as in torch. ``criterion``
    replaces the cross-entropy by any (logits, targets) -> mean loss. ``augment``
    (the paper's AUG) runs in ``prepare``: one draw per step, shared by both SAM passes."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0, criterion: LossFn | None = None,
                 augment: StrongAugment | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.criterion = criterion or self.cross_entropy
        self.augment = augment

    def prepare(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        if self.augment is None:
            return batch
        images, labels = batch
        return self.augment(images, labels, generator)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        logits = model(images)
        return self.criterion(logits, targets), logits


class Adversarial(Classification):
    """Adversarial training (Madry et al. 2018): the loss is the cross-entropy at PGD
    examples, found in ``prepare`` against the current weights (model in eval mode,
    random start, ``steps`` steps of ``step_size``; ``vitsam.robustness.adversarial.pgd``),
    so both SAM passes see the same adversarial batch and SAM flattens the adversarial
    loss. RandAugment (``augment``) runs before the attack; mixup is refused, since the
    attack needs hard labels."""

    name = "adversarial"

    def __init__(self, eps: float, steps: int, step_size: float | None = None, norm: str = "linf",
                 label_smoothing: float = 0.0, augment: StrongAugment | None = None):
        if augment is not None and augment.mixup_alpha:
            raise VitsamError("train.objective=adversarial does not combine with mixup (augment.mixup_alpha > 0): "
                              "the attack needs hard labels; set augment.mixup_alpha=0")
        super().__init__(label_smoothing, augment=augment)
        self.eps, self.steps, self.step_size, self.norm = eps, steps, step_size, norm

    def prepare(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        from vitsam.robustness.adversarial import pgd

        images, labels = super().prepare(model, batch, generator)
        adversarial = pgd(model, images, labels, self.eps, steps=self.steps, step_size=self.step_size,
                          norm=self.norm, generator=generator)
        return adversarial, labels


# --------------------------------------------------------------------------- MoCo v3

def moco_mlp(layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's heads: (Linear without bias -> BatchNorm -> ReLU) x (layers - 1), then a
    Linear without bias and, with ``last_bn``, a BatchNorm without affine parameters."""
    modules: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        modules.append(nn.Linear(in_dim if i == 0 else hidden_dim, out_dim if last else hidden_dim, bias=False))
        if not last:
            modules += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        elif last_bn:
            modules.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*modules)


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) in [0, 1] -> the features the classifier head reads (B, D)."""
    return model.forward_head(model.forward_features(model.normalize(images)), pre_logits=True)


def gather_keys(keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Under torch.distributed, every rank's keys (no gradient flows through keys) and this
    rank's offset into them, as MoCo v3's ``concat_all_gather``; else (keys, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, 0
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts), dist.get_rank() * len(keys)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's contrastive loss: query i's positive is key i, every other key (of all
    ranks) a negative; cross-entropy of cosine similarities / T, scaled by 2T as theirs."""
    q, k = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
    k, offset = gather_keys(k)
    logits = q @ k.T / temperature                                        # (B, B * ranks)
    labels = torch.arange(len(q), device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(Objective):
    """MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
    Transformers"): a batch is two views (``prepare``); the model (base encoder) + a
    3-layer projection MLP + a 2-layer prediction MLP embed each view as a query; a
    momentum encoder (a copy of model + projection, no gradient, updated in
    ``after_step`` as an exponential moving average with coefficient m rising from
    ``momentum`` to 1 along a half cosine) embeds each view as a key; the loss is
    info_nce(q1, k2) + info_nce(q2, k1). The model's classifier head takes no part (it
    is frozen here; a linear probe or fine-tuning trains it later)."""

    name = "contrastive"

    def __init__(self, model: nn.Module, temperature: float = 0.2, momentum: float = 0.99,
                 projection_dim: int = 256, hidden_dim: int = 4096, crop_scale: tuple = (0.08, 1.0)):
        super().__init__()
        if temperature <= 0 or not 0 <= momentum <= 1:
            raise VitsamError(f"contrastive.temperature must be > 0 and contrastive.momentum in [0, 1], "
                              f"got {temperature} and {momentum}")
        self.temperature, self.base_momentum, self.crop_scale = temperature, momentum, tuple(crop_scale)
        features = model.head.in_features
        self.projector = moco_mlp(3, features, hidden_dim, projection_dim, last_bn=True)
        self.predictor = moco_mlp(2, projection_dim, hidden_dim, projection_dim, last_bn=False)
        model.head.requires_grad_(False)   # no gradient ever reaches it (DDP would wait for one)
        self.momentum_encoder = copy.deepcopy(model).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps = 0

    def begin(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def momentum(self) -> float:
        """m_t = 1 - (1 - m_0) (1 + cos(pi t / T)) / 2 (MoCo v3's schedule); m_0 until
        ``begin`` has given T."""
        if self.total_steps <= 0:
            return self.base_momentum
        progress = min(1.0, float(self.steps_done) / self.total_steps)
        return 1 - (1 - self.base_momentum) * (1 + math.cos(math.pi * progress)) / 2

    def prepare(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        images = batch[0]
        return (contrastive_view(images, generator, self.crop_scale, blur_prob=1.0, solarize_prob=0.0),
                contrastive_view(images, generator, self.crop_scale, blur_prob=0.1, solarize_prob=0.2))

    def query(self, model: nn.Module, view: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(pooled_features(model, view)))

    @torch.no_grad()
    def key(self, view: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(pooled_features(self.momentum_encoder, view))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, None]:
        first, second = batch
        q1, q2 = self.query(model, first), self.query(model, second)
        k1, k2 = self.key(first), self.key(second)
        return info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature), None

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        m = self.momentum()
        pairs = [(self.momentum_encoder, model), (self.momentum_projector, self.projector)]
        for target, source in pairs:
            for k, q in zip(target.parameters(), source.parameters()):
                k.mul_(m).add_(q.detach(), alpha=1 - m)
        self.steps_done += 1


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


def _augment(cfg, model: nn.Module) -> StrongAugment | None:
    return StrongAugment.from_config(cfg.augment, model.num_classes)


def classification(cfg, model: nn.Module) -> Objective:
    return Classification(label_smoothing=cfg.train.label_smoothing, augment=_augment(cfg, model))


def adversarial(cfg, model: nn.Module) -> Objective:
    a = cfg.adversarial
    return Adversarial(a.eps, a.steps, a.step_size or None, a.norm, label_smoothing=cfg.train.label_smoothing,
                       augment=_augment(cfg, model))


def contrastive(cfg, model: nn.Module) -> Objective:
    c = cfg.contrastive
    if not hasattr(model, "head") or not hasattr(model, "forward_head"):
        raise VitsamError(f"train.objective=contrastive needs a vitsam model with a linear head, "
                          f"got {type(model).__name__}")
    return MoCoV3(model, c.temperature, c.momentum, c.projection_dim, c.hidden_dim, c.crop_scale)


# name (config.ObjectiveName) -> builder(cfg, model) -> Objective
OBJECTIVES: dict[str, Callable] = {"classification": classification, "adversarial": adversarial,
                                   "contrastive": contrastive}


def build_objective(cfg, model: nn.Module) -> Objective:
    """The objective ``cfg.train.objective`` for ``model`` (its heads sized from the model)."""
    if cfg.train.objective not in OBJECTIVES:
        raise unknown_choice("train.objective", cfg.train.objective, OBJECTIVES)
    return OBJECTIVES[cfg.train.objective](cfg, model)
