"""Mixed precision (docs/paper.md, SAM pitfall 6): fp16 loss scaling with both SAM passes unscaled
before their norms, the whole update skipped when either pass overflows; bf16 trains
the small ViT like fp32 does."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam import presets
from vitsam.data.sources import load_source
from vitsam.models import create_model
from vitsam.optim import SAM, LookSAM
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint
from vitsam.train.loop import train
from vitsam.train.metrics import read_metrics
from vitsam.train.precision import LossScaler
from fakes import classify
from vitsam.train.step import train_step

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")


class BlowUp(nn.Module):
    """Multiplies its input by 1e5 on the forward calls listed in ``calls`` (1-based): the
    fp16 logits overflow to inf, the loss and every gradient become inf / nan."""

    def __init__(self, calls=()):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, x):
        self.count += 1
        return x * 1e5 if self.count in self.calls else x


def tiny_net(blow_up_on=()) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), BlowUp(blow_up_on))


def batch(n=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def fp16_step(model, optimizer, scaler=None, seed=1, grad_clip=0.05):
    x, y = batch(seed=seed)
    return train_step(classify(model), optimizer, (x, y), grad_clip=grad_clip,
                      autocast_dtype=torch.float16, scaler=scaler)


def test_loss_scaler_backs_off_grows_and_round_trips():
    scaler = LossScaler(init_scale=1024.0, growth_interval=3)
    scaler.update(overflow=True)
    assert scaler.scale == 512.0
    for _ in range(3):
        scaler.update(overflow=False)
    assert scaler.scale == 1024.0 and scaler.steps_without_overflow == 0
    scaler.update(overflow=False)
    state = scaler.state_dict()
    assert set(state) == set(torch.amp.GradScaler("cpu").state_dict())  # GradScaler's keys
    resumed = LossScaler()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


def test_scaled_fp16_sam_step_equals_the_unscaled_one():
    """The gradients are unscaled before the SAM norm, clipping and the update: the
    scaler changes only the range of the backward pass (its scale is a power of 2).
    Clipping and the reported norm would be 2^16 times off otherwise."""
    scaled, plain = tiny_net(), tiny_net()
    make = lambda model: SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)  # noqa: E731
    scaled_opt, plain_opt, scaler = make(scaled), make(plain), LossScaler()
    for seed in range(3):
        a = fp16_step(scaled, scaled_opt, scaler, seed=seed)
        b = fp16_step(plain, plain_opt, seed=seed)
        assert not a.skipped and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-6)
        assert a.grad_norm > 0.05  # the clipping is really exercised
    for p, q in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert scaler.scale == 2.0 ** 16 and scaler.steps_without_overflow == 3


@pytest.mark.parametrize("overflowing_pass", [1, 2])
@pytest.mark.parametrize("optimizer_class", [SAM, LookSAM])
def test_overflow_in_either_pass_skips_the_whole_update(overflowing_pass, optimizer_class):
    model = tiny_net(blow_up_on={overflowing_pass})
    optimizer = optimizer_class(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2)
    scaler = LossScaler()
    before = [p.detach().clone() for p in model.parameters()]
    result = fp16_step(model, optimizer, scaler)
    assert result.skipped and not math.isfinite(result.grad_norm)
    assert model[-1].count == overflowing_pass  # an overflowing first pass stops before the ascent
    for p, w in zip(model.parameters(), before):
        assert torch.equal(p, w)  # w, not w + e, and no base step
    assert not optimizer.base_optimizer.state  # AdamW took no step: no moments, no step count
    assert scaler.scale == 2.0 ** 15
    # the next step is an ordinary one at the lower scale
    result = fp16_step(model, optimizer, scaler, seed=2)
    assert not result.skipped and math.isfinite(result.loss)
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), before))


def test_overflow_skips_the_base_optimizer_too():
    model = tiny_net(blow_up_on={1})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    assert fp16_step(model, optimizer, LossScaler()).skipped
    assert not optimizer.state and all(torch.equal(p, w) for p, w in zip(model.parameters(), before))


@needs_fmnist
def test_fp16_training_loop_checkpoints_and_resumes_the_loss_scale(tmp_path):
    def run(stop):
        cfg = presets.resolve("smoke", None, ["train.precision=fp16", "sam.rho=0.1",
                                                 f"train.stop_after_steps={stop}", "train.log_every=1"])
        return train(cfg, tmp_path / "run", resume=stop > 1)

    run(1)
    run(3)
    scaler = load_checkpoint(tmp_path / "run" / CHECKPOINT)["scaler"]
    # 3 clean steps in a row: a fresh scaler after the resume would count 2
    assert scaler == {**LossScaler().state_dict(), "_growth_tracker": 3}
    records = read_metrics(tmp_path / "run", "train")
    assert [r["skipped_steps"] for r in records] == [0] * 3 and records[-1]["loss_scale"] == 2.0 ** 16


def fmnist_slice(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    source = load_source("fashion_mnist", split, str(FMNIST))
    return source.images[:n].float() / 255, source.labels[:n]  # (n, 1, 28, 28) in [0, 1], (n,)


@pytest.mark.slow
@needs_fmnist
def test_bf16_trains_the_small_vit_like_fp32():
    """Same init, same batches: bf16 autocast ends within a few points of fp32 accuracy
    and a few percent of its loss, both far from chance (2.30)."""
    images, labels = fmnist_slice("train", 1536)
    test_images, test_labels = fmnist_slice("test", 1000)
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = create_model("vit_tiny", patch_size=7, depth=1).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
        for step in range(48):  # 2 epochs of 24 batches of 64
            index = slice(64 * (step % 24), 64 * (step % 24 + 1))
            train_step(classify(model), optimizer, (images[index], labels[index]), grad_clip=1.0,
                       autocast_dtype=dtype)
        with torch.no_grad():
            logits = model.eval()(test_images).float()
        results[dtype] = (F.cross_entropy(logits, test_labels).item(),
                          (logits.argmax(-1) == test_labels).float().mean().item())
    (loss32, acc32), (loss16, acc16) = results[None], results[torch.bfloat16]
    assert acc32 > 0.55 and loss32 < 1.25, "the fp32 reference did not learn"
    assert abs(acc16 - acc32) < 0.04 and abs(loss16 - loss32) < 0.06 * loss32
