"""The worker tests/test_distributed.py launches with torchrun (2 processes, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_worker.py MODE OUT

MODE ``steps``: a few SAM-family steps of a tiny DDP model per scenario, each rank on its
own batch; every rank saves its weights after every step (and what else the test checks)
to OUT/steps_rank{r}.pt. Then a short ``smoke`` training run into OUT/full.
MODE ``crash``: the same training run into OUT/part, rank 1 killed (SIGKILL) at its
CRASH_AT-th step of the first attempt; torchrun --max-restarts=1 restarts both workers.
MODE ``details``: a short training run with dropout into OUT/run on the small arrays data
set OUT/data.npz (``write_details_data``: an odd number of test images), recording each
rank's initial weights and the dropout masks of its first step; then the sharded
``evaluate`` of ``eval_model`` on EVAL_SIZES test images. Each rank saves what it saw
to OUT/details_rank{r}.pt.
The fault injection and the recording live here, never in the library.
"""
from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitsam import presets
from vitsam.data.build import eval_loader
from vitsam.data.sources import load_source
from vitsam.evaluators.accuracy import evaluate
from vitsam.models import create_model
from vitsam.optim import GSAM, SAM, LookSAM
from vitsam.train import distributed, loop
from vitsam.train.precision import LossScaler
from vitsam.train.step import train_step
from fakes import classify

STEPS, RHO, LR = 2, 0.1, 0.1
CRASH_AT = 5
TRAIN_OVERRIDES = ["sam.rho=0.1", "train.epochs=0.5", "train.stop_after_steps=9",  # all 9 steps
                   "train.checkpoint_every=3", "train.log_every=1", "train.threads=1"]
TRAIN_IMAGES, TEST_IMAGES = 256, 101   # details: 4 steps of 2 x 32 images; an odd test set
EVAL_SIZES, EVAL_BATCH = (TEST_IMAGES, 100, 3), 16   # odd, even, fewer images than a batch
DROP_RATE = 0.1


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


# ---------------------------------------------------------------------- details

def write_details_data(path: Path) -> None:
    """The first TRAIN_IMAGES / TEST_IMAGES Fashion-MNIST images as an ``arrays:`` data set."""
    train, test = (load_source("fashion_mnist", split) for split in ("train", "test"))
    np.savez(path, train_images=train.images[:TRAIN_IMAGES, 0].numpy(),
             train_labels=train.labels[:TRAIN_IMAGES].numpy(),
             test_images=test.images[:TEST_IMAGES, 0].numpy(), test_labels=test.labels[:TEST_IMAGES].numpy())


def details_config(out: Path):
    return presets.resolve("smoke", None, [f"data.dataset=arrays:{out / 'data.npz'}", "data.train_fraction=1.0",
                                           f"model.drop_rate={DROP_RATE}", "train.epochs=1",
                                           f"train.eval_batch_size={EVAL_BATCH}", "train.threads=1"])


def eval_model() -> nn.Module:
    """A small ViT whose head is random (not zero), so that its predictions vary per image."""
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, img_size=28, in_chans=1, depth=1)
    with torch.no_grad():
        model.head.weight.normal_(0, 1)
    return model.eval()


def record_dropout(record: dict, name: str, module: nn.Module, inputs, output) -> None:
    """The first training-mode forward of each Dropout: which inputs it zeroed."""
    if module.training and name not in record:
        given = inputs[0] != 0
        record[name] = {"dropped": (output == 0) & given, "given": given}


def details_mode(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record = {"masks": {}}
    real_build_model = loop.build_model

    def build_and_watch(args):
        model = real_build_model(args)
        record["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, module in model.named_modules():
            if isinstance(module, nn.Dropout) and module.p > 0:
                module.register_forward_hook(partial(record_dropout, record["masks"], name))
        return model

    loop.build_model = build_and_watch
    cfg = details_config(out)
    loop.train(cfg, out / "run")  # joins the process group already set up
    loop.build_model = real_build_model

    d, model = distributed.setup("cpu"), eval_model()
    record["eval"] = {}
    for n in EVAL_SIZES:
        loader = eval_loader(cfg.data, "test", EVAL_BATCH, examples=n, rank=d.rank, world_size=d.world_size)
        result = evaluate(model, loader, d.device, d=d, keep_predictions=True)
        record["eval"][n] = {"accuracy": result.accuracy, "loss": result.loss, "images": result.images,
                             "predicted": torch.from_numpy(result.predicted),
                             "labels": torch.from_numpy(result.labels)}
    torch.save(record, out / f"details_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    {"steps": steps_mode, "crash": crash_mode, "details": details_mode}[mode](out_dir)
