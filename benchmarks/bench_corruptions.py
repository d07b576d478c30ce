"""Throughput of the corruptions and of the demo's robustness evaluation.

Prints, side by side: images per second of each corruption (all 5 severities) on a
grey 28 px batch (CIFAR-10-C parameters, the demo's case) and on a colour 224 px
batch (ImageNet-C parameters), then the time of the demo's evaluation of one tiny
model (corrupted accuracy over 19 x 5 and PGD-10 at 4 radii) split into corruption
and model time. The ratio against the reference package is in
tools/imagecorruptions_fidelity.py (it needs its own environment).

    python benchmarks/bench_corruptions.py [--threads 2] [--images 200]
"""
from __future__ import annotations

import argparse
import time

import torch

from vitsam.robustness.corruptions import ALL_CORRUPTIONS, corrupt


def corruption_rate(images: torch.Tensor, name: str) -> float:
    corrupt(images[:2], name, 1, torch.Generator().manual_seed(0))      # warm-up
    start = time.perf_counter()
    for severity in range(1, 6):
        corrupt(images, name, severity, torch.Generator().manual_seed(severity))
    return 5 * len(images) / (time.perf_counter() - start)


def demo_evaluation(images: int) -> None:
    from vitsam.data import Loader, load_source
    from vitsam.models import create_model
    from vitsam.robustness.evaluate import evaluate_corruptions, evaluate_pgd
    from vitsam.robustness.runner import DEFAULT_PGD_EPS

    source = load_source("fashion_mnist", "test")
    source = source.select(torch.linspace(0, len(source) - 1, images).round().long())
    loader = Loader(source, min(250, images), train=False, img_size=28)
    start = time.perf_counter()
    for index, (x, _) in enumerate(loader):
        for name in ALL_CORRUPTIONS:
            for severity in range(1, 6):
                corrupt(x, name, severity, torch.Generator().manual_seed(index))
    corruption_seconds = time.perf_counter() - start
    print(f"\ndemo evaluation, {images} Fashion-MNIST test images per model")
    print(f"  corrupting 19 x 5 copies alone: {corruption_seconds:.1f} s")
    for model_name in ("vit_tiny", "mixer_tiny", "resnet_tiny"):
        model = create_model(model_name, num_classes=10, img_size=28, in_chans=1).eval()
        start = time.perf_counter()
        evaluate_corruptions(model, loader)
        corrupted = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_pgd(model, loader, DEFAULT_PGD_EPS)
        adversarial = time.perf_counter() - start
        print(f"  {model_name:12s} corrupted accuracy {corrupted:6.1f} s   PGD-10 x {len(DEFAULT_PGD_EPS)} radii "
              f"{adversarial:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=200, help="test images per model in the demo timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    small = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    large = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"torch threads {args.threads}; images per second over severities 1..5")
    print(f"{'corruption':20s} {'28px grey (cifar)':>18s} {'224px RGB (imagenet)':>21s}")
    for name in ALL_CORRUPTIONS:
        print(f"{name:20s} {corruption_rate(small, name):18.0f} {corruption_rate(large, name):21.1f}", flush=True)
    demo_evaluation(args.images)


if __name__ == "__main__":
    main()
