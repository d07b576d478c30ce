"""ms per training step: base AdamW vs SAM (and LookSAM, k=5) around it, same train_step.

SAM costs two forward/backward passes, so about 2x the base step is the expected
ratio; more than that is overhead of the wrapper (weight copies, norms). LookSAM runs
the second pass once every k steps, so its ratio should approach 1 + 1/k (its cost is
periodic by design, so it is timed as the mean over whole cycles of k steps).
Batch 128 of 28x28x1 images, 2 torch threads, warm-up steps excluded, median of N.
Run: python benchmarks/bench_sam_step.py [--steps 20] [--models vit_tiny mixer_tiny resnet_tiny]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vitsam.models import create_model
from vitsam.optim import SAM, LookSAM
from vitsam.train.objectives import Classification, TrainingModule
from vitsam.train.step import train_step


LOOKSAM_K = 5


def step_times_ms(model, optimizer, images, labels, steps: int, warmup: int = 3) -> list[float]:
    times = []
    trainee = TrainingModule(model, Classification())
    for step in range(warmup + steps):
        start = time.perf_counter()
        train_step(trainee, optimizer, (images, labels), grad_clip=1.0)
        if step >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times


def ms_per_step(model, optimizer, images, labels, steps: int) -> float:
    if isinstance(optimizer, LookSAM):
        cycles = max(1, steps // LOOKSAM_K)
        optimizer.steps_done = 0  # start the timed window on an ascent step
        return statistics.mean(step_times_ms(model, optimizer, images, labels,
                                             cycles * LOOKSAM_K, warmup=0))
    return statistics.median(step_times_ms(model, optimizer, images, labels, steps))


def optimizers(model):
    kwargs = dict(lr=1e-3, weight_decay=0.3)
    return {
        "base": torch.optim.AdamW(model.parameters(), **kwargs),
        "SAM": SAM(model.parameters(), torch.optim.AdamW, rho=0.05, **kwargs),
        "LookSAM": LookSAM(model.parameters(), torch.optim.AdamW, rho=0.05, k=LOOKSAM_K, **kwargs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "mixer_tiny", "resnet_tiny"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch_size,))
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"median of {args.steps} steps")
    print(f"{'model':<14}{'base ms':>10}{'SAM ms':>10}{'SAM/base':>10}{'LookSAM ms':>12}{'Look/base':>11}")
    for name in args.models:
        model = create_model(name, num_classes=10, img_size=28, in_chans=1).train()
        ms = {label: ms_per_step(model, optimizer, images, labels, args.steps)
              for label, optimizer in optimizers(model).items()}
        print(f"{name:<14}{ms['base']:>10.1f}{ms['SAM']:>10.1f}{ms['SAM'] / ms['base']:>10.2f}"
              f"{ms['LookSAM']:>12.1f}{ms['LookSAM'] / ms['base']:>11.2f}")


if __name__ == "__main__":
    main()
