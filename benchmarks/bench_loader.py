"""Images/s of the Fashion-MNIST training loader vs the cheapest possible batch fetch.

Loader: shuffle + Inception random resized crop 28 -> 28 + flip (one grid_sample per
batch). Baseline: ``images[idx].float() / 255`` with the same random indices, no
augmentation. Target: the loader above 20k images/s on a 2-core CPU, so it never
starves a small model. Run: python benchmarks/bench_loader.py [--batch-size 256] [--steps 200] [--threads N]
"""
import argparse
import os
import time

import torch

from vitsam.data import Loader, load_source


def images_per_second(batches, steps: int) -> float:
    next(batches)  # warm up
    start, count = time.perf_counter(), 0
    for _, (images, _labels) in zip(range(steps), batches):
        count += len(images)
    return count / (time.perf_counter() - start)


def baseline_batches(source, batch_size: int):
    while True:
        order = torch.randperm(len(source))
        for step in range(len(source) // batch_size):
            idx = order[step * batch_size:(step + 1) * batch_size]
            yield source.images[idx].float() / 255, source.labels[idx]


def loader_batches(loader: Loader):
    epoch = 0
    while True:
        yield from loader.iterate(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    source = load_source("fashion_mnist", "train")
    print(f"decode Fashion-MNIST train ({len(source)} images): {time.perf_counter() - start:.2f} s")
    loader = Loader(source, args.batch_size, train=True, img_size=28, seed=0)
    baseline = images_per_second(baseline_batches(source, args.batch_size), args.steps)
    augmented = images_per_second(loader_batches(loader), args.steps)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows both rows)")
    print(f"baseline images[idx].float()/255 : {baseline:10.0f} img/s")
    print(f"Loader (crop + flip)             : {augmented:10.0f} img/s  "
          f"({augmented / baseline:.2f}x baseline; target > 20000)")


if __name__ == "__main__":
    main()
