"""Training throughput with 1 process vs N DDP processes (torchrun), same global batch.

Each layout is PROCESSES x THREADS per process. The default splits the machine's cores
evenly: on a 2-core CPU, 1 x 2 against 2 x 1 (gloo), plus 1 x 1 for reference (on a
shared, oversubscribed machine, threads that wait on each other lose most). On GPUs use
one process per GPU (NCCL). Each row times the base optimizer, SAM with the per-rank
perturbation (the ascent pass skips the all-reduce) and SAM with the global one (both
passes all-reduce), so the table shows what DDP costs and what m-sharpness saves.

    python benchmarks/bench_ddp.py [--layouts 1x2 2x1 1x1] [--model vit_tiny] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vitsam.config import OptimConfig, SAMConfig
from vitsam.models import create_model
from vitsam.optim import build_optimizer
from vitsam.train import distributed
from vitsam.train.precision import AUTOCAST
from vitsam.train.objectives import Classification, TrainingModule
from vitsam.train.step import train_step

VARIANTS = {
    "base": SAMConfig(rho=0.0),
    "SAM per-rank": SAMConfig(rho=0.05, perturbation="per_rank"),
    "SAM global": SAMConfig(rho=0.05, perturbation="global"),
}


def images_per_s(net, model, d, args, sam_cfg) -> float:
    per_rank = args.batch_size // d.world_size
    gen = torch.Generator().manual_seed(d.rank)
    images = torch.rand(per_rank, args.in_chans, args.img_size, args.img_size, generator=gen).to(d.device)
    labels = torch.randint(0, args.num_classes, (per_rank,), generator=gen).to(d.device)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3), sam_cfg)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            distributed.barrier(d)
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)
            start = time.perf_counter()
        train_step(net, optimizer, (images, labels), grad_clip=1.0,
                   autocast_dtype=AUTOCAST[args.precision])
    distributed.barrier(d)
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return args.batch_size * args.steps / (time.perf_counter() - start)


def worker(args) -> None:
    """One rank under torchrun; rank 0 writes {variant: images/s} to args.result."""
    d = distributed.setup(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                         in_chans=args.in_chans).to(d.device).train()
    net = DistributedDataParallel(TrainingModule(model, Classification()), device_ids=[d.device] if d.device.type == "cuda" else None) \
        if d.enabled else model
    rates = {name: images_per_s(net, model, d, args, cfg) for name, cfg in VARIANTS.items()}
    if d.is_main:
        Path(args.result).write_text(json.dumps(rates))
    distributed.teardown(d)


def launch(procs: int, threads: int, forwarded: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rates.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   __file__, "--worker", "--result", str(result), "--threads", str(threads), *forwarded]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", help="PROCESSESxTHREADS, e.g. 1x2 2x1")
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    forwarded = sys.argv[1:]  # the workers parse the same flags
    cores = os.cpu_count() or 1
    layouts = args.layouts or [f"1x{cores}", f"2x{max(1, cores // 2)}", "1x1"]
    table = {}
    for layout in dict.fromkeys(layouts):
        procs, threads = map(int, layout.split("x"))
        table[layout] = launch(procs, threads, forwarded)
    print(f"\n{args.model}, global batch {args.batch_size}, {args.precision} on {args.device}, "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f}; images/s (x the first layout's)")
    print(f"{'procs x threads':<16}" + "".join(f"{name:>22}" for name in VARIANTS))
    first = table[layouts[0]]
    for layout, rates in table.items():
        print(f"{layout:<16}" + "".join(f"{rates[n]:>14.0f} (x{rates[n] / first[n]:.2f})" for n in VARIANTS))


if __name__ == "__main__":
    main()
