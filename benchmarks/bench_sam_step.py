"""SAM step / base step and LookSAM (k=5) step / base step per model family, as the
training loop runs them (``train_step``, AdamW, clipping at 1), and what the wrapper
itself costs.

SAM runs two forward/backward passes and one base update, so its ratio is at most 2
plus the wrapper's own work (weight snapshot and restore, the global norm, the ascent);
LookSAM runs the second pass once every k steps, so about 1 + 1/k plus its own work
(one global norm and a foreach add on the k - 1 other steps).

1. Whole steps, interleaved step by step: a round is k steps of each optimizer taken in
   turn (base, SAM, LookSAM, base, SAM, ...; LookSAM's k steps are one whole cycle), so a
   load that drifts on a shared machine weighs on all three alike. The ratio of the
   round's totals is printed as median [min-max] over the rounds, and the ratio of the
   fastest rounds (the least disturbed), by wall-clock and by process CPU time (which does
   not count the waits for a core that other processes hold).
2. The wrapper's own time: the same optimizers stepped with a closure that only installs
   a stored gradient (no forward/backward), minus the base step and the extra closure
   calls: ms per step, and as % of one base training step. This part is not hidden by
   the noise of the passes.

    python benchmarks/bench_sam_step.py [--rounds 7] [--threads 1] [--models vit_tiny ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from vitsam.models import create_model
from vitsam.optim import SAM, LookSAM
from vitsam.train.objectives import Classification, TrainingModule
from vitsam.train.step import train_step

LOOKSAM_K = 5
ADAMW = dict(lr=1e-3, weight_decay=0.3)


def optimizers(model) -> dict[str, torch.optim.Optimizer]:
    return {"base": torch.optim.AdamW(model.parameters(), **ADAMW),
            "SAM": SAM(model.parameters(), torch.optim.AdamW, rho=0.05, **ADAMW),
            "LookSAM": LookSAM(model.parameters(), torch.optim.AdamW, rho=0.05, k=LOOKSAM_K, **ADAMW)}


def block_ms(steps, n: int) -> tuple[float, float]:
    """(wall ms, process CPU ms) per call of ``steps()`` over n calls in a row. The CPU
    time does not count the waits for a core that other processes hold."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        steps()
    return 1000 * (time.perf_counter() - wall) / n, 1000 * (time.process_time() - cpu) / n


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def whole_steps(model, images, labels, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) ms per training step of each optimizer, mean over each round's k steps."""
    trainee = TrainingModule(model, Classification())
    runs = {name: (lambda opt=opt: train_step(trainee, opt, (images, labels), grad_clip=1.0))
            for name, opt in optimizers(model).items()}
    for run in runs.values():
        block_ms(run, LOOKSAM_K)  # warm-up: one whole cycle, so every round starts on an ascent
    times = {name: [] for name in runs}
    for _ in range(rounds):
        total = {name: (0.0, 0.0) for name in runs}
        for _ in range(LOOKSAM_K):
            for name, run in runs.items():
                total[name] = tuple(a + b / LOOKSAM_K for a, b in zip(total[name], block_ms(run, 1)))
        for name in runs:
            times[name].append(total[name])
    return times


def own_time(model, images, labels, rounds: int) -> dict[str, list[float]]:
    """CPU ms each optimizer adds to a step beyond the base update and one pass per closure call."""
    trainee = TrainingModule(model, Classification())
    trainee.zero_grad(set_to_none=True)
    trainee((images, labels))[0].backward()
    params = [p for p in model.parameters() if p.grad is not None]
    stored = [p.grad.detach().clone() for p in params]

    def install_gradient():  # stands in for forward + backward
        for p, g in zip(params, torch._foreach_clone(stored)):
            p.grad = g

    def stepper(opt):
        def run():
            opt.zero_grad(set_to_none=True)
            opt.step(install_gradient)
        return run

    runs = {name: stepper(opt) for name, opt in optimizers(model).items()}
    runs["closure"] = install_gradient
    calls = {"SAM": 2.0, "LookSAM": 1 + 1 / LOOKSAM_K}  # closure calls per step
    n = 10 * LOOKSAM_K
    for run in runs.values():
        block_ms(run, n)
    times = {name: [] for name in calls}
    for _ in range(rounds):
        ms = {name: block_ms(run, n)[1] for name, run in runs.items()}
        for name, k in calls.items():
            times[name].append(ms[name] - ms["base"] - (k - 1) * ms["closure"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "mixer_tiny", "resnet_tiny"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch_size,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch_size} of 1x28x28, "
          f"{args.rounds} rounds of {LOOKSAM_K} steps each, interleaved step by step, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("x/base: ratio of round totals, median [min-max] over rounds, then that of the fastest "
          "rounds; own: the optimizer's own CPU ms per step, median [min-max], and % of the median base step")
    print(f"{'model':<12}{'clock':<6}{'base ms':>9}{'SAM/base':>26}{'LookSAM/base':>26}"
          f"{'SAM own ms':>24}{'LookSAM own ms':>24}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, img_size=28, in_chans=1).train()
        steps = whole_steps(model, images, labels, args.rounds)
        own = own_time(model, images, labels, args.rounds)
        for clock, column in (("wall", 0), ("cpu", 1)):
            times = {variant: [t[column] for t in blocks] for variant, blocks in steps.items()}
            base = statistics.median(times["base"])
            ratio = {v: spread([t / b for t, b in zip(times[v], times["base"])])
                     + f" {min(times[v]) / min(times['base']):.2f}" for v in own}
            row = f"{name:<12}{clock:<6}{base:>9.1f}{ratio['SAM']:>26}{ratio['LookSAM']:>26}"
            if clock == "cpu":
                row += "".join(f"{spread(own[v]) + f' {100 * statistics.median(own[v]) / base:.1f}%':>24}"
                               for v in own)
            print(row)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
