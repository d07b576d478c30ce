"""The worker tests/test_distributed.py launches with torchrun (2 processes, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_worker.py MODE OUT

MODE ``steps``: a few SAM-family steps of a tiny DDP model per scenario, each rank on its
own batch; every rank saves its weights after every step (and what else the test checks)
to OUT/steps_rank{r}.pt. Then a short ``smoke`` training run into OUT/full.
MODE ``crash``: the same training run into OUT/part, rank 1 killed (SIGKILL) at its
CRASH_AT-th step of the first attempt; torchrun --max-restarts=1 restarts both workers.
The fault injection lives here, never in the library.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitsam import presets
from vitsam.optim import GSAM, SAM, LookSAM
from vitsam.train import loop
from vitsam.train.precision import LossScaler
from vitsam.train.step import train_step
from fakes import classify

STEPS, RHO, LR = 2, 0.1, 0.1
CRASH_AT = 5
TRAIN_OVERRIDES = ["sam.rho=0.1", "train.epochs=0.5", "train.stop_after_steps=9",  # all 9 steps
                   "train.checkpoint_every=3", "train.log_every=1", "train.threads=1"]


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def rank_batch(rank: int, step: int, n: int = 8):
    """Rank r's batch of step s (the test rebuilds the same ones)."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def run_steps(make_optimizer, rank: int, steps: int = STEPS, accumulation_steps: int = 1) -> list:
    model = tiny_mlp()
    net = DistributedDataParallel(classify(model))
    optimizer = make_optimizer(model.parameters())
    history = []
    for step in range(steps):
        x, y = rank_batch(rank, step)
        train_step(net, optimizer, (x, y), accumulation_steps=accumulation_steps)
        history.append(weights(model))
    return history


class BlowUp(nn.Module):
    """On rank 1 only, multiplies the logits of forward call ``call`` by 1e5: fp16 overflow."""

    def __init__(self, call: int):
        super().__init__()
        self.call, self.count = call, 0

    def forward(self, x):
        self.count += 1
        return x * 1e5 if dist.get_rank() == 1 and self.count == self.call else x


def fp16_overflow(call: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), BlowUp(call))
    net = DistributedDataParallel(classify(model))
    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    scaler = LossScaler()
    record = {"initial": weights(model), "skipped": [], "scale": [], "weights": [], "base_state": []}
    for step in range(2):
        x, y = rank_batch(dist.get_rank(), step)
        result = train_step(net, optimizer, (x.float(), y), autocast_dtype=torch.float16,
                            scaler=scaler)
        record["skipped"].append(result.skipped)
        record["scale"].append(scaler.scale)
        record["weights"].append(weights(model))
        record["base_state"].append(len(optimizer.base_optimizer.state))
    return record


def steps_mode(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sgd = dict(lr=LR)
    results = {
        "per_rank": run_steps(lambda p: SAM(p, torch.optim.SGD, rho=RHO, **sgd), rank),
        "global": run_steps(lambda p: SAM(p, torch.optim.SGD, rho=RHO, per_rank=False, **sgd), rank),
        "per_rank_accumulated": run_steps(lambda p: SAM(p, torch.optim.SGD, rho=RHO, **sgd), rank,
                                          accumulation_steps=2),
        "gsam": run_steps(lambda p: GSAM(p, torch.optim.AdamW, rho=RHO, lr=1e-2), rank, steps=3),
        "looksam": run_steps(lambda p: LookSAM(p, torch.optim.AdamW, rho=RHO, k=2, lr=1e-2), rank, steps=3),
        "asam": run_steps(lambda p: SAM(p, torch.optim.SGD, rho=RHO, adaptive=True, eta=0.01, **sgd), rank),
        "fp16_overflow_pass1": fp16_overflow(call=1),
        "fp16_overflow_pass2": fp16_overflow(call=2),
    }
    torch.save(results, out / f"steps_rank{rank}.pt")
    cfg = presets.resolve("smoke", None, TRAIN_OVERRIDES)
    loop.train(cfg, out / "full")  # joins the process group already set up
    dist.destroy_process_group()


def crash_mode(out: Path) -> None:
    attempt, rank = os.environ["TORCHELASTIC_RESTART_COUNT"], int(os.environ["RANK"])
    real_train_step, calls = loop.train_step, []

    def train_step_that_dies(*args, **kwargs):
        calls.append(1)
        (out / f"calls_attempt{attempt}_rank{rank}").write_text(str(len(calls)))
        if attempt == "0" and rank == 1 and len(calls) == CRASH_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_train_step(*args, **kwargs)

    loop.train_step = train_step_that_dies
    cfg = presets.resolve("smoke", None, TRAIN_OVERRIDES)
    loop.train(cfg, out / "part")


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    {"steps": steps_mode, "crash": crash_mode}[mode](out_dir)
