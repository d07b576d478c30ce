"""ms per training step of the SAM family relative to the base optimizer, all built from
config by ``build_optimizer`` and run by the same ``train_step``.

Expected: SAM, ASAM and GSAM about 2x the base step (two forward/backward passes; more
is the wrapper's overhead: weight copies, norms, GSAM's extra gradient copy and dot
products); LookSAM about 1 + 1/k, its second pass really skipped on k - 1 of k steps
(timed over whole cycles of k steps, its cost being periodic by design). The variants run
in turn, one block of k steps each per round, so a load that drifts on a shared machine
weighs on all alike; ratios are taken per round and printed as median [min-max], by
wall-clock and (on CPU) by process CPU time, which does not count waits for a core.

    python benchmarks/bench_sam_variants.py                       # vit_tiny, 28x28, CPU
    python benchmarks/bench_sam_variants.py --model vit_s16 --img-size 224 --in-chans 3 \\
        --num-classes 1000 --batch-size 128 --device cuda --precision bf16    # on a GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from vitsam.config import OptimConfig, SAMConfig
from vitsam.models import create_model
from vitsam.optim import build_optimizer
from vitsam.train.precision import AUTOCAST, loss_scaler
from vitsam.train.objectives import Classification, TrainingModule
from vitsam.train.step import train_step

LOOKSAM_K = 5
VARIANTS = {
    "base": SAMConfig(rho=0.0),
    "SAM": SAMConfig(rho=0.05),
    "ASAM": SAMConfig(rho=0.5, adaptive=True, eta=0.01),
    "GSAM": SAMConfig(rho=0.05, variant="gsam", rho_min=0.01, gsam_alpha=0.2),
    "LookSAM": SAMConfig(rho=0.05, variant="looksam", k=LOOKSAM_K, looksam_alpha=0.7),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One variant's model, optimizer and step: ``ms_per_step(n)`` times n steps."""

    def __init__(self, sam_cfg: SAMConfig, args, images, labels):
        torch.manual_seed(0)
        self.model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                                  in_chans=args.in_chans).to(images.device).train()
        self.optimizer = build_optimizer(self.model, OptimConfig(lr=1e-3, weight_decay=0.3), sam_cfg)
        self.images, self.labels = images, labels
        self.trainee = TrainingModule(self.model, Classification())
        self.dtype, self.scaler = AUTOCAST[args.precision], loss_scaler(args.precision)

    def ms_per_step(self, steps: int) -> tuple[float, float]:
        """(wall ms, process CPU ms) per step over ``steps`` steps in a row."""
        synchronize(self.images.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            train_step(self.trainee, self.optimizer, (self.images, self.labels), grad_clip=1.0,
                       autocast_dtype=self.dtype, scaler=self.scaler)
        synchronize(self.images.device)
        return 1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, args.in_chans, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    print(f"{args.model}, batch {args.batch_size} of {args.in_chans}x{args.img_size}x{args.img_size}, "
          f"{args.precision} on {args.device}" + (f" ({args.threads} threads)" if device.type == "cpu" else "")
          + f", {args.steps} steps each, load average {os.getloadavg()[0]:.1f}")
    runners = {name: Runner(cfg, args, images, labels) for name, cfg in VARIANTS.items()}
    for runner in runners.values():
        runner.ms_per_step(LOOKSAM_K)  # warm-up: one whole cycle, so every block starts on an ascent
    # rounds of one LookSAM cycle per variant, the variants in turn (see the docstring)
    blocks = {name: [] for name in runners}
    for _ in range(max(1, args.steps // LOOKSAM_K)):
        for name, runner in runners.items():
            blocks[name].append(runner.ms_per_step(LOOKSAM_K))
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    print(f"{'variant':<10}" + "".join(f"{clock + ' ms/step':>16}{'x base (' + clock + ')':>24}" for clock in clocks))
    for name in runners:
        row = f"{name:<10}"
        for column, _ in enumerate(clocks):
            times = [block[column] for block in blocks[name]]
            base = [block[column] for block in blocks["base"]]
            row += f"{statistics.median(times):>16.1f}{spread([t / b for t, b in zip(times, base)]):>24}"
        print(row)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
