"""Training objectives on tiny models: both SAM passes see the same (augmented, adversarial)
batch, an AUG + SAM run resumes exactly, adversarial examples lie in the eps-ball, MoCo
v3's momentum encoder is an exponential average that gets no gradient."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitsam import presets
from vitsam.config import Config, OptimConfig, SAMConfig
from vitsam.data.augment import StrongAugment
from vitsam.errors import VitsamError
from vitsam.models import create_model
from vitsam.optim import build_optimizer
from vitsam.train import loop
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint
from vitsam.train.objectives import (Adversarial, Classification, MoCoV3, TrainingModule, build_objective,
                                     info_nce)
from vitsam.train.step import train_step

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def tiny_vit(**kw):
    torch.manual_seed(0)
    return create_model("vit_tiny", depth=1, width=16, num_heads=2, mlp_dim=32, **kw)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class Recorder:
    """Wraps an objective's ``loss`` to keep (copies of) every batch it is handed."""

    def __init__(self, objective):
        self.seen, self.inner = [], objective.loss
        objective.loss = self

    def __call__(self, model, batch):
        self.seen.append(tuple(t.detach().clone() for t in batch))
        return self.inner(model, batch)


def sam_step(objective, model, raw, accumulation_steps=1, seed=0):
    trainee = TrainingModule(model, objective)
    optimizer = build_optimizer(trainee, OptimConfig(lr=1e-3), SAMConfig(rho=0.1))
    prepared = objective.prepare(model, raw, torch.Generator().manual_seed(seed))
    recorder = Recorder(objective)
    train_step(trainee, optimizer, prepared, accumulation_steps=accumulation_steps)
    return prepared, recorder.seen


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_both_sam_passes_see_the_same_augmented_batch(accumulation_steps):
    objective = Classification(augment=StrongAugment(2, 15.0, 0.5, num_classes=10))
    raw = batch()
    prepared, seen = sam_step(objective, tiny_vit(), raw, accumulation_steps)
    assert len(seen) == 2 * accumulation_steps                      # two passes of k micro-batches
    first, second = seen[:accumulation_steps], seen[accumulation_steps:]
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    images = torch.cat([micro[0] for micro in first])
    assert torch.equal(images, prepared[0]) and not torch.equal(images, raw[0])
    targets = torch.cat([micro[1] for micro in first])
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))


def test_both_sam_passes_see_the_same_adversarial_batch():
    model = tiny_vit()
    objective = Adversarial(eps=8 / 255, steps=2)
    raw = batch()
    prepared, seen = sam_step(objective, model, raw)
    assert len(seen) == 2 and all(torch.equal(x, y) for x, y in zip(*seen))
    assert torch.equal(seen[0][0], prepared[0]) and torch.equal(seen[0][1], raw[1])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_examples_lie_in_the_eps_ball_and_raise_the_loss(norm):
    model = tiny_vit()
    # a model that already separates the classes a little, so the attack has a loss to raise
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    model.train()
    eps = 8 / 255 if norm == "linf" else 0.5
    images, labels = batch(16)
    objective = Adversarial(eps=eps, steps=3, norm=norm)
    adv, same_labels = objective.prepare(model, (images, labels), torch.Generator().manual_seed(0))
    delta = (adv - images).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= eps + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(same_labels, labels)
    assert model.training and all(p.requires_grad for p in model.parameters()), "the attack restores the model"
    with torch.no_grad():
        model.eval()
        assert F.cross_entropy(model(adv), labels) > F.cross_entropy(model(images), labels)
    again = objective.prepare(model, (images, labels), torch.Generator().manual_seed(0))[0]
    assert torch.equal(adv, again), "the random start comes from the step's generator alone"


def test_adversarial_objective_refuses_mixup_and_builds_from_config():
    with pytest.raises(VitsamError, match="mixup"):
        Adversarial(eps=0.03, steps=2, augment=StrongAugment(0, 0.0, 0.2, 10))
    cfg = Config()
    cfg.train.objective = "adversarial"
    cfg.adversarial.step_size = 0.0
    objective = build_objective(cfg, tiny_vit())
    assert isinstance(objective, Adversarial) and objective.step_size is None   # 0 -> pgd's 2.5 eps / steps


# --------------------------------------------------------------------------- MoCo v3

def moco(model=None, **kw):
    model = model or tiny_vit()
    return model, MoCoV3(model, temperature=0.2, momentum=0.9, projection_dim=8, hidden_dim=16,
                         crop_scale=(0.3, 1.0), **kw)


def test_info_nce_is_the_written_out_cross_entropy():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    t = 0.2
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    by_hand = 0.0
    for i in range(5):
        logits = [float(qn[i] @ kn[j]) / t for j in range(5)]
        by_hand += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    assert info_nce(q, k, t).item() == pytest.approx(2 * t * by_hand / 5, rel=1e-5)


def test_momentum_encoder_gets_no_gradient_and_is_an_exponential_average():
    model, objective = moco()
    trainee = TrainingModule(model, objective)
    optimizer = build_optimizer(trainee, OptimConfig(lr=1e-2), SAMConfig(rho=0.1))
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = list(objective.momentum_encoder.parameters()) + list(objective.momentum_projector.parameters())
    assert not any(id(p) in trained for p in frozen) and not any(p.requires_grad for p in frozen)
    assert not any(id(p) in trained for p in model.head.parameters()), "the classifier takes no part"
    before = [p.detach().clone() for p in frozen]
    views = objective.prepare(model, batch(), torch.Generator().manual_seed(0))
    result = train_step(trainee, optimizer, views)
    assert result.logits is None and math.isfinite(result.loss)
    assert all(p.grad is None for p in frozen)
    assert all(torch.equal(p, b) for p, b in zip(frozen, before)), "only after_step moves the momentum encoder"
    queries = list(model.parameters()) + list(objective.projector.parameters())
    m = objective.momentum()
    objective.after_step(model)
    for k, k0, q in zip(frozen, before, queries):
        assert torch.allclose(k, m * k0 + (1 - m) * q.detach(), atol=1e-7)
    assert int(objective.steps_done) == 1


def test_momentum_rises_to_one_along_a_half_cosine():
    _, objective = moco()
    assert objective.momentum() == pytest.approx(0.9)                 # no run length yet: constant
    objective.begin(total_steps=10)
    values = []
    for step in range(11):
        objective.steps_done.fill_(step)
        values.append(objective.momentum())
    assert values[0] == pytest.approx(0.9) and values[5] == pytest.approx(0.95) and values[10] == pytest.approx(1.0)
    assert values == sorted(values)


def test_views_differ_are_reproducible_and_the_loss_is_symmetric():
    model, objective = moco()
    raw = batch()
    first, second = objective.prepare(model, raw, torch.Generator().manual_seed(3))
    again = objective.prepare(model, raw, torch.Generator().manual_seed(3))
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert first.shape == raw[0].shape and not torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1
    model.eval(), objective.eval()
    with torch.no_grad():
        forward, _ = objective.loss(model, (first, second))
        backward, _ = objective.loss(model, (second, first))
    assert forward.item() == pytest.approx(backward.item(), rel=1e-5)
    with pytest.raises(VitsamError, match="temperature"):
        MoCoV3(tiny_vit(), temperature=0.0)


# --------------------------------------------------------------------------- through the loop

def smoke(*overrides):
    return presets.resolve("smoke", None, ["model.overrides={\"depth\": 1}", "train.threads=1", *overrides])


def weights(run_dir):
    return load_checkpoint(Path(run_dir) / CHECKPOINT)["model"]


@needs_data
def test_the_loop_prepares_once_per_step_and_both_passes_see_that_batch(tmp_path, monkeypatch):
    prepared, seen = [], []

    def recording_objective(cfg, model):
        objective = build_objective(cfg, model)
        inner_prepare = objective.prepare

        def prepare(model, batch, generator):
            out = inner_prepare(model, batch, generator)
            prepared.append(out)
            return out
        objective.prepare = prepare
        recorder = Recorder(objective)
        seen.append(recorder.seen)
        return objective

    monkeypatch.setattr(loop, "build_objective", recording_objective)
    loop.train(smoke("sam.rho=0.1", "augment.randaugment_layers=2", "augment.mixup_alpha=0.5",
                     "train.stop_after_steps=3"), tmp_path / "run")
    calls = seen[0]
    assert len(prepared) == 3 and len(calls) == 6
    for step in range(3):
        for a, b, p in zip(calls[2 * step], calls[2 * step + 1], prepared[step]):
            assert torch.equal(a, b) and torch.equal(a, p)


@needs_data
def test_aug_with_sam_resumes_exactly(tmp_path):
    extra = ["sam.rho=0.1", "augment.randaugment_layers=2", "augment.mixup_alpha=0.5"]
    full = loop.train(smoke(*extra), tmp_path / "full")
    part = tmp_path / "part"
    loop.train(smoke(*extra, "train.stop_after_steps=7"), part)
    loop.train(smoke(*extra), part, resume=True)
    for key, value in weights(full).items():
        assert torch.equal(value, weights(part)[key]), key


@needs_data
def test_contrastive_and_adversarial_objectives_run_in_the_loop(tmp_path):
    run = loop.train(smoke("train.objective=contrastive", "contrastive.hidden_dim=16", "contrastive.projection_dim=8",
                           "sam.rho=0.05", "train.stop_after_steps=2"), tmp_path / "moco")
    state = load_checkpoint(run / CHECKPOINT)
    assert any(k.startswith("momentum_encoder.") for k in state["objective"])
    assert int(state["objective"]["steps_done"]) == 2
    loop.train(smoke("train.objective=adversarial", "adversarial.steps=1", "sam.rho=0.05", "train.stop_after_steps=2"),
               tmp_path / "adv")
    assert load_checkpoint(tmp_path / "adv" / CHECKPOINT)["step"] == 2
