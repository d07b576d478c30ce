"""Gradient accumulation with the SAM family (docs/paper.md, SAM pitfall 9): k micro-batches of b
give the update of one batch of k * b, so the ascent uses the whole batch's gradient."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam import presets
from vitsam.errors import VitsamError
from vitsam.optim import GSAM, SAM, LookSAM
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint
from vitsam.train.loop import train
from fakes import SyncRecordingNet, classify
from vitsam.train.step import train_step

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm: micro-batch statistics would differ from the batch's
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def data(n=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


OPTIMIZERS = {
    "base": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sam": lambda params: SAM(params, torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9),
    "asam": lambda params: SAM(params, torch.optim.SGD, rho=0.5, adaptive=True, eta=0.01, lr=0.1),
    "gsam": lambda params: GSAM(params, torch.optim.AdamW, rho=0.1, alpha=0.3, lr=1e-2),
    "looksam": lambda params: LookSAM(params, torch.optim.SGD, rho=0.1, k=2, alpha=0.5, lr=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("micro_batches", [2, 4, 3])  # 3: uneven micro-batches of 6, 5, 5
def test_k_micro_batches_give_the_update_of_the_whole_batch(name, micro_batches):
    whole, split = tiny_mlp(), tiny_mlp()
    whole_opt, split_opt = OPTIMIZERS[name](whole.parameters()), OPTIMIZERS[name](split.parameters())
    for step in range(3):  # LookSAM k=2: ascent, reuse, ascent
        x, y = data(seed=step)
        a = train_step(classify(whole), whole_opt, (x, y), grad_clip=1.0)
        b = train_step(classify(split), split_opt, (x, y), grad_clip=1.0,
                       accumulation_steps=micro_batches)
        assert b.loss == pytest.approx(a.loss, rel=1e-12) and b.logits.shape == (16, 3)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-10)
    for p, q in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


def test_only_the_last_micro_batch_of_a_synchronized_pass_all_reduces():
    x, y = data(n=9)
    model = SyncRecordingNet()
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), accumulation_steps=3)
    assert model.synced == [False, False, True]
    model.synced.clear()
    train_step(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1), (x, y),
               accumulation_steps=3)
    assert model.synced == [False, False, False] + [False, False, True]  # per-rank ascent, then synced
    model.synced.clear()
    train_step(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1, per_rank=False), (x, y),
               accumulation_steps=3)
    assert model.synced == [False, False, True] * 2  # the "global" perturbation synchronizes both


def test_bad_accumulation_is_a_clear_error(tmp_path):
    model = tiny_mlp()
    x, y = data(n=4)
    with pytest.raises(VitsamError, match="accumulation_steps"):
        train_step(classify(model), torch.optim.SGD(model.parameters(), lr=0.1), (x, y),
                   accumulation_steps=5)
    cfg = presets.resolve("smoke", None, ["train.accumulation_steps=3"])  # batch 64
    with pytest.raises(VitsamError, match="accumulation_steps"):
        train(cfg, tmp_path / "run")


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")
def test_training_loop_with_accumulation_matches_whole_batches(tmp_path):
    # SGD: Adam's g / sqrt(v) would blow float noise in the (truly zero) gradient of the
    # attention key bias up to whole learning-rate steps
    runs = {}
    for k in (1, 4):
        cfg = presets.resolve("smoke", None, [f"train.accumulation_steps={k}", "train.stop_after_steps=3",
                                                 "sam.rho=0.1", "optim.name=sgd", "optim.lr=0.05"])
        runs[k] = load_checkpoint(train(cfg, tmp_path / f"k{k}") / CHECKPOINT)["model"]
    for key, value in runs[1].items():
        torch.testing.assert_close(runs[4][key], value, rtol=1e-4, atol=1e-5, msg=key)
