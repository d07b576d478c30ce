"""Speed of the corruptions against the reference package, imagecorruptions 1.1.2.

Per corruption, on 224 px RGB images with the ImageNet-C parameters, every severity:

- ours, per image: ``corrupt`` on one image at a time;
- ours, batch: ``corrupt`` on a batch of 32, seconds per image;
- theirs: ``imagecorruptions.corrupt`` (uint8 in, uint8 out) on each image, timed in its
  own environment by a child process (tools/corruption_reference.py; it has no batch
  form, so a batch costs it its per-image time); glass blur on one image (seconds each).

Each repeat times theirs, then ours; the ratio theirs / ours is printed as the median and
the range over repeats. Times are process CPU time by default (``--clock cpu``): on a shared
machine wall time also counts other jobs' time slices; with one thread on each side, CPU
time is the wall time of an idle machine. Without the reference environment (default /tmp/icvenv, setup in
tools/corruption_reference.py) a line says so and only our times print. Then our
throughput on 28 px grey batches (CIFAR-10-C parameters, the demo's case) and, with
``--demo``, the demo's robustness evaluation split into corruption and model time.

    python benchmarks/bench_corruptions.py [--threads 1] [--repeats 3] [--clock cpu|wall]
        [--reference-python PATH] [--demo]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsam.robustness.corruptions import ALL_CORRUPTIONS, corrupt, frost_source

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SCRIPT = ROOT / "tools" / "corruption_reference.py"
BATCH = 32
SINGLE = 8          # images timed one at a time (ours and theirs)


def test_images(count: int, size: int = 224) -> np.ndarray:
    """Smooth colour fields with hard edges, uint8 (N, H, W, 3)."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(count, 3, 6, 6, generator=g), size=(size, size), mode="bicubic")
    edges = F.interpolate((torch.rand(count, 1, 5, 5, generator=g) > 0.5).float(), size=(size, size))
    images = (0.6 * smooth + 0.35 * edges).clamp(0, 1)
    return (images.permute(0, 2, 3, 1) * 255).round().byte().numpy()


def reference_seconds(python: str, images: np.ndarray, names, threads: int, clock: str) -> dict:
    """Seconds per image of each corruption in the reference environment (one repeat)."""
    with tempfile.TemporaryDirectory() as work:
        np.save(Path(work) / "images.npy", images)
        out = Path(work) / "times.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        subprocess.run([python, str(REFERENCE_SCRIPT), "time", str(Path(work) / "images.npy"), str(out),
                        "--repeats", "1", "--clock", clock, *names], check=True, env=env)
        return {name: seconds[0] for name, seconds in json.loads(out.read_text()).items()}


def our_seconds(batch: torch.Tensor, name: str, timer) -> tuple[float, float]:
    """(per image one at a time, per image in a batch of BATCH), every severity."""
    corrupt(batch[:1], name, 1, torch.Generator().manual_seed(0))                     # warm-up
    start = timer()
    for i in range(SINGLE):
        for severity in range(1, 6):
            corrupt(batch[i:i + 1], name, severity, torch.Generator().manual_seed(severity))
    single = (timer() - start) / (5 * SINGLE)
    start = timer()
    for severity in range(1, 6):
        corrupt(batch, name, severity, torch.Generator().manual_seed(severity))
    return single, (timer() - start) / (5 * len(batch))


def spread(values) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def compare(args) -> None:
    images = test_images(BATCH)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    names = args.corruptions or list(ALL_CORRUPTIONS)
    have_reference = Path(args.reference_python).is_file()
    if not have_reference:
        print(f"reference environment {args.reference_python} not found: no comparison with imagecorruptions "
              f"(set it up as tools/corruption_reference.py says)")
    timer = time.process_time if args.clock == "cpu" else time.perf_counter
    ours = {name: [] for name in names}
    theirs = {name: [] for name in names}
    for _ in range(args.repeats):
        if have_reference:
            for name, seconds in reference_seconds(args.reference_python, images[:SINGLE], names,
                                                   args.threads, args.clock).items():
                theirs[name].append(seconds)
        for name in names:
            ours[name].append(our_seconds(batch, name, timer))
    print(f"\n224 px RGB, ImageNet-C parameters, severities 1-5; {args.clock} time; torch threads {args.threads} "
          f"(the reference process {args.threads} thread(s)); {args.repeats} repeats: median [min-max]; "
          f"frost: {frost_source()}")
    print(f"{'corruption':18s} {'ours ms/img':>12s} {'batch ms/img':>13s} {'theirs ms/img':>14s} "
          f"{'theirs/ours':>20s} {'theirs/ours batch':>20s}")
    for name in names:
        single = [1e3 * s for s, _ in ours[name]]
        batched = [1e3 * b for _, b in ours[name]]
        line = f"{name:18s} {statistics.median(single):12.2f} {statistics.median(batched):13.2f}"
        if theirs[name]:
            reference = [1e3 * t for t in theirs[name]]
            line += (f" {statistics.median(reference):14.2f} {spread([t / s for t, s in zip(reference, single)]):>20s}"
                     f" {spread([t / b for t, b in zip(reference, batched)]):>20s}")
        print(line, flush=True)


def small_throughput() -> None:
    small = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    print("\n28 px grey batches of 256, CIFAR-10-C parameters: images per second over severities 1-5")
    for name in ALL_CORRUPTIONS:
        corrupt(small[:2], name, 1, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for severity in range(1, 6):
            corrupt(small, name, severity, torch.Generator().manual_seed(severity))
        print(f"{name:20s} {5 * len(small) / (time.perf_counter() - start):10.0f}", flush=True)


def demo_evaluation(images: int) -> None:
    from vitsam.data import Loader, load_source
    from vitsam.models import create_model
    from vitsam.robustness.evaluate import evaluate_corruptions, evaluate_pgd
    from vitsam.evaluators.robustness import DEFAULT_EPS as DEFAULT_PGD_EPS

    source = load_source("fashion_mnist", "test")
    source = source.select(torch.linspace(0, len(source) - 1, images).round().long())
    loader = Loader(source, min(250, images), train=False, img_size=28)
    start = time.perf_counter()
    for index, (x, _) in enumerate(loader):
        for name in ALL_CORRUPTIONS:
            for severity in range(1, 6):
                corrupt(x, name, severity, torch.Generator().manual_seed(index))
    print(f"\ndemo evaluation, {images} Fashion-MNIST test images per model")
    print(f"  corrupting 19 x 5 copies alone: {time.perf_counter() - start:.1f} s")
    for model_name in ("vit_tiny", "mixer_tiny", "resnet_tiny"):
        model = create_model(model_name, num_classes=10, img_size=28, in_chans=1).eval()
        start = time.perf_counter()
        evaluate_corruptions(model, loader)
        corrupted = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_pgd(model, loader, DEFAULT_PGD_EPS)
        print(f"  {model_name:12s} corrupted accuracy {corrupted:6.1f} s   PGD-10 x {len(DEFAULT_PGD_EPS)} radii "
              f"{time.perf_counter() - start:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-python", default="/tmp/icvenv/bin/python")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--corruptions", nargs="*", default=None)
    parser.add_argument("--demo", action="store_true", help="also time the demo's robustness evaluation")
    parser.add_argument("--images", type=int, default=200, help="test images per model in the demo timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compare(args)
    small_throughput()
    if args.demo:
        demo_evaluation(args.images)


if __name__ == "__main__":
    sys.exit(main())
