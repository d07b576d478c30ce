"""Learning-rate schedules and the optimizer factory (weight-decay groups, SAM wrapping)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vitsam.config import OptimConfig, SAMConfig
from vitsam.errors import VitsamError
from vitsam.optim import GSAM, SAM, LookSAM, build_optimizer, build_scheduler, lr_lambda
from vitsam.train.objectives import Classification, TrainingModule


@pytest.mark.parametrize("step, want", [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0), (150, 0.0)])
def test_linear_warmup_then_linear_decay(step, want):
    assert lr_lambda(step, total_steps=100, warmup_steps=10) == pytest.approx(want)


@pytest.mark.parametrize("step, want", [(0, 0.0), (5, 0.5), (10, 1.0), (32.5, 0.5 + 0.5 / math.sqrt(2)),
                                        (55, 0.5), (100, 0.0)])
def test_cosine_decay(step, want):
    assert lr_lambda(step, 100, 10, "cosine") == pytest.approx(want)


def test_min_lr_ratio_and_constant():
    assert lr_lambda(100, 100, 10, "linear", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_lambda(55, 100, 10, "linear", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_lambda(100, 100, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_lambda(5, 100, 10, "constant") == pytest.approx(0.5)
    assert lr_lambda(90, 100, 10, "constant") == 1.0
    assert lr_lambda(0, 100, 0) == 1.0  # no warmup: the first step at the peak


def test_unknown_schedule_names_the_choices():
    with pytest.raises(VitsamError, match="cosine, linear"):
        lr_lambda(0, 10, 0, "exponential")


def test_scheduler_follows_lr_lambda_and_resumes():
    param = nn.Parameter(torch.zeros(2))
    cfg = OptimConfig(lr=0.2, warmup_fraction=0.1, schedule="linear")
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * lr_lambda(30, 100, 10))
    state = scheduler.state_dict()

    other = torch.optim.SGD([param], lr=cfg.lr)
    resumed = build_scheduler(other, cfg, total_steps=100)
    resumed.load_state_dict(state)
    other.step()
    resumed.step()
    assert other.param_groups[0]["lr"] == pytest.approx(0.2 * lr_lambda(31, 100, 10))


class TinyViTLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    def no_weight_decay(self):
        return {"cls_token", "pos_embed"}


def names_in(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(name for name, p in model.named_parameters() if id(p) in ids)


def test_weight_decay_only_on_weights():
    model = TinyViTLike()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.3), SAMConfig(rho=0.0))
    decay, no_decay = optimizer.param_groups
    assert names_in(model, decay) == ["head.weight", "proj.weight"]
    assert decay["weight_decay"] == 0.3
    assert names_in(model, no_decay) == ["cls_token", "head.bias", "norm.bias", "norm.weight",
                                         "pos_embed", "proj.bias"]
    assert no_decay["weight_decay"] == 0.0


def test_weight_decay_exemptions_through_a_training_module():
    """The training loop hands the factory a TrainingModule: its parameter names and its
    no_weight_decay() both carry the "model." prefix, and must still meet."""
    trainee = TrainingModule(TinyViTLike(), Classification())
    optimizer = build_optimizer(trainee, OptimConfig(weight_decay=0.3), SAMConfig(rho=0.1))
    decay, no_decay = optimizer.param_groups
    assert names_in(trainee, decay) == ["model.head.weight", "model.proj.weight"]
    assert names_in(trainee, no_decay) == ["model.cls_token", "model.head.bias", "model.norm.bias",
                                           "model.norm.weight", "model.pos_embed", "model.proj.bias"]


def test_factory_builds_base_or_sam():
    model = TinyViTLike()
    adamw = build_optimizer(model, OptimConfig(name="adamw", betas=(0.8, 0.9)), SAMConfig(rho=0.0))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.8, 0.9)
    sgd = build_optimizer(model, OptimConfig(name="sgd", lr=0.5, momentum=0.8, nesterov=True),
                          SAMConfig(rho=0.0))
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["nesterov"]
    sam = build_optimizer(model, OptimConfig(name="sgd"), SAMConfig(rho=0.1, adaptive=True))
    assert isinstance(sam, SAM) and isinstance(sam.base_optimizer, torch.optim.SGD)
    assert sam.param_groups is sam.base_optimizer.param_groups
    assert [g["rho"] for g in sam.param_groups] == [0.1, 0.1]
    assert all(g["adaptive"] for g in sam.param_groups)
    assert [g["weight_decay"] for g in sam.param_groups] == [0.3, 0.0]


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(VitsamError, match="adamw, sgd"):
        build_optimizer(TinyViTLike(), OptimConfig(name="lamb"), SAMConfig())


def test_factory_picks_the_sam_variant_and_its_hyperparameters():
    model = TinyViTLike()
    optim_cfg = OptimConfig(name="sgd", lr=0.4, min_lr_ratio=0.25)
    gsam = build_optimizer(model, optim_cfg, SAMConfig(rho=0.2, variant="gsam", rho_min=0.05, gsam_alpha=0.3,
                                                       adaptive=True, eta=0.01))
    assert type(gsam) is GSAM and gsam.per_rank
    group = gsam.param_groups[0]
    assert (group["rho"], group["rho_min"], group["alpha"], group["adaptive"], group["eta"]) == \
        (0.2, 0.05, 0.3, True, 0.01)
    assert (group["lr_min"], group["lr_max"]) == pytest.approx((0.1, 0.4))
    looksam = build_optimizer(model, optim_cfg, SAMConfig(rho=0.1, variant="looksam", k=3, looksam_alpha=0.6,
                                                          perturbation="global"))
    assert type(looksam) is LookSAM and looksam.k == 3 and looksam.param_groups[0]["alpha"] == 0.6
    sam = build_optimizer(model, optim_cfg, SAMConfig(rho=0.1, perturbation="global"))
    assert type(sam) is SAM and not sam.per_rank
    with pytest.raises(VitsamError, match="gsam, looksam, sam"):
        build_optimizer(model, optim_cfg, SAMConfig(rho=0.1, variant="esam"))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_gsam_rho_follows_the_lr_schedule():
    """rho_t = rho_min + (rho - rho_min)(lr_t - lr_min) / (lr_max - lr_min), lr_t from the
    LambdaLR, clamped to [rho_min, rho] (warmup below lr_min)."""
    model = TinyViTLike()
    optim_cfg = OptimConfig(name="sgd", lr=0.4, warmup_steps=10, schedule="linear", min_lr_ratio=0.25)
    optimizer = build_optimizer(model, optim_cfg, SAMConfig(rho=0.2, variant="gsam", rho_min=0.05))
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=110)
    group = optimizer.param_groups[0]
    seen = {}
    for step in range(111):
        seen[step] = (group["lr"], optimizer._rho(group))
        scheduler.step()
    assert seen[0] == (0.0, 0.05)                        # warmup from 0 < lr_min: clamped
    assert seen[10] == pytest.approx((0.4, 0.2))         # the peak
    lr = 0.4 * lr_lambda(60, 110, 10, min_lr_ratio=0.25)
    assert seen[60] == pytest.approx((lr, 0.05 + 0.15 * (lr - 0.1) / 0.3))
    assert seen[110] == pytest.approx((0.1, 0.05))       # the floor
