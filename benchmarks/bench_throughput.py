"""Training throughput of the demo's models on this CPU, against the machine's own limit.

What it prints, each figure as median [min-max] over interleaved rounds (so a load that
drifts on a shared machine weighs on every configuration alike), by wall clock and per
CPU-second of this process (which does not count the waits for a core other processes
hold, the better figure on a loaded machine):

1. peak: fp32 matmul (an n x n sgemm) GFLOP/s at 1 and 2 threads: the machine's limit.
2. models: per model, FLOPs per training image (forward + backward, counted by
   ``torch.utils.flop_counter.FlopCounterMode`` with the attention written out, since the
   counter does not see the CPU's fused attention kernel), then training img/s of one
   ``vitsam.train.step.train_step`` through ``TrainingModule(model, Classification())``
   with the demo's base optimizer (AdamW for ViT / Mixer, SGD + Nesterov for ResNet) as
   ``build_optimizer`` makes it ("base"), the same optimizer fused ("base fused"), SAM
   around the fused one, and bf16 autocast; ResNet also in NCHW ("base NCHW", the layout
   before ResNet went channels-last). The fraction of peak is model FLOP/s over the
   best 1-thread sgemm round, both per CPU-second.
3. loader: ms per training batch of the demo's transform (crop_scale (1, 1) + flip:
   whole-pixel crops, gathered) against the grid_sample path it used before, and the
   Inception crop for reference.
4. loop: CPU time per step of the training loop (``vitsam.train.loop.train`` on
   Fashion-MNIST, the demo's preset; runs of 60 and 10 steps differenced, so setup and
   checkpoint cancel) against bare ``train_step`` calls: what the loop adds (data, RNG,
   scheduler, logging).
5. threads: wall img/s of one model's base step at 1 thread, 2 threads, and 2 processes
   x 1 thread (summed): how to spend 2 cores.
6. compile (``--compile``, minutes): ``torch.compile`` of the training module, its
   compile time (wall, compiler processes included) and step time against eager.
7. decode (``--decode``): folder-loader img/s on generated JPEGs (ImageNet-like 500x375
   and 1024x768 photos), decoding at reduced scale (``jpeg_draft``) against full decoding.

    python benchmarks/bench_throughput.py [--rounds 5] [--models vit_tiny mixer_tiny:width=128,depth=6 ...]
        [--sections peak models loader loop threads] [--compile] [--decode]
"""
from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitsam.config import OptimConfig, SAMConfig
from vitsam.models import create_model, explicit_attention
from vitsam.optim import SAM, build_optimizer
from vitsam.train.objectives import Classification, TrainingModule
from vitsam.train.step import train_step

DEMO_MODELS = ["vit_tiny", "mixer_tiny", "resnet_tiny"]
# sizes the demo's calibration may pick (widths 64-128, depth 4-6, patches 4 or 7)
VARIANTS = ["vit_tiny:width=128,depth=6,num_heads=4,mlp_dim=256", "vit_tiny:patch_size=4",
            "mixer_tiny:width=128,depth=6,tokens_mlp_dim=128,channels_mlp_dim=256", "mixer_tiny:patch_size=4",
            "resnet_tiny:widths=[32,64,128]"]
SECTIONS = ("peak", "models", "loader", "loop", "threads")


# --------------------------------------------------------------------------- timing

def cpu_seconds(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, calls: int) -> tuple[float, float]:
    """(wall s, CPU s) per call of ``fn`` over ``calls`` calls in a row."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def interleaved(runs: dict, rounds: int, calls: int, warmup: int = 1) -> dict[str, list[tuple[float, float]]]:
    """Each run ``calls`` times per round, the runs in turn: {name: [(wall, cpu) s per call]}."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, calls))
    return times


def spread(values, fmt: str = ".0f") -> str:
    values = list(values)
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


# --------------------------------------------------------------------------- 1. peak

def sgemm_rates(n: int, threads: int, rounds: int) -> dict[str, list[float]]:
    """GFLOP/s of an n x n x n fp32 matmul by wall clock and per CPU-second."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = interleaved({"mm": lambda: torch.mm(a, b, out=out)}, rounds, 3)["mm"]
    finally:
        torch.set_num_threads(previous)
    flops = 2 * n ** 3 / 1e9
    return {"wall": [flops / w for w, _ in times], "cpu": [flops / c for _, c in times]}


def peak(args) -> float:
    print(f"\n== 1. fp32 matmul peak: sgemm {args.n} x {args.n}, {args.rounds} rounds ({load()})")
    rates = {threads: sgemm_rates(args.n, threads, args.rounds) for threads in (1, 2)}
    for threads, rate in rates.items():
        print(f"  {threads} thread{'s' if threads > 1 else ' '}: {spread(rate['wall'])} GFLOP/s wall, "
              f"{spread(rate['cpu'])} GFLOP/s per CPU-second")
    best = max(rates[1]["cpu"])  # other processes only ever slow it (shared caches): the best round is the limit
    print(f"  peak used below: {best:.0f} GFLOP/s per CPU-second (the best 1-thread round)")
    return best


# --------------------------------------------------------------------------- 2. models

def parse_model(spec: str) -> tuple[str, dict]:
    """'vit_tiny:width=128,depth=6' -> ('vit_tiny', {'width': 128, 'depth': 6}); values as JSON."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, _split_top(rest)):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return name, overrides


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: 'widths=[32,64],x=1' -> ['widths=[32,64]', 'x=1']."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def demo_optim(family: str) -> OptimConfig:
    """The demo presets' base optimizer (vitsam.presets.fmnist)."""
    if family == "resnet":
        return OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True, grad_clip=0.0)
    return OptimConfig(name="adamw", lr=3e-3, weight_decay=0.05, grad_clip=1.0)


def fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer with its fused kernel (one op for all parameters): the change
    the optimizer factory needs (each group keeps its own settings, the kernel flags aside)."""
    cls = type(optimizer)
    accepted = set(inspect.signature(cls).parameters) - {"params", "fused", "foreach"}
    groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")} for group in optimizer.param_groups]
    return cls(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted}, fused=True)


def flops_per_image(model, batch) -> float:
    """Forward + backward FLOPs per image; attention written out so the counter sees it."""
    trainee = TrainingModule(model, Classification())
    with explicit_attention(model), FlopCounterMode(display=False) as counter:
        trainee(batch)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch[0])


def step_runs(name: str, overrides: dict, batch, bf16: bool) -> dict:
    """{configuration: one training step}, each on its own copy of the same initial model."""
    def build(memory_format=None):
        torch.manual_seed(0)
        model = create_model(name, **overrides)
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
        return model, TrainingModule(model, Classification())

    family = create_model(name, **overrides).family
    optim = demo_optim(family)
    step = dict(grad_clip=optim.grad_clip)
    runs = {}
    model, trainee = build()
    factory = build_optimizer(trainee, optim, SAMConfig())
    runs["base"] = lambda: train_step(trainee, factory, batch, **step)
    model, trainee_f = build()
    base_fused = fused(build_optimizer(trainee_f, optim, SAMConfig()))
    runs["base fused"] = lambda: train_step(trainee_f, base_fused, batch, **step)
    model, trainee_s = build()
    sam = SAM(None, fused(build_optimizer(trainee_s, optim, SAMConfig())), rho=0.05)
    runs["SAM fused"] = lambda: train_step(trainee_s, sam, batch, **step)
    if family == "resnet":
        model, trainee_c = build(torch.contiguous_format)
        nchw = fused(build_optimizer(trainee_c, optim, SAMConfig()))
        runs["base fused NCHW"] = lambda: train_step(trainee_c, nchw, batch, **step)
    if bf16:
        model, trainee_b = build()
        half = fused(build_optimizer(trainee_b, optim, SAMConfig()))
        runs["base fused bf16"] = lambda: train_step(trainee_b, half, batch, autocast_dtype=torch.bfloat16, **step)
    return runs


def models(args, peak_gflops: float | None) -> dict:
    torch.set_num_threads(1)
    print(f"\n== 2. training steps, batch {args.batch_size}, 1 thread, {args.rounds} rounds x {args.calls} steps "
          f"({load()})")
    print("  img/s wall | img per CPU-s | ms/step (CPU) | fraction of the 1-thread sgemm peak (CPU)")
    summary = {}
    for spec in args.models:
        name, overrides = parse_model(spec)
        model = create_model(name, **overrides)
        batch = (torch.rand(args.batch_size, model.in_chans, model.img_size, model.img_size),
                 torch.randint(0, model.num_classes, (args.batch_size,)))
        flops = flops_per_image(model, batch)
        params = sum(p.numel() for p in model.parameters())
        print(f"  {spec}: {params / 1e3:.0f}k parameters, {flops / 1e6:.1f} MFLOP per training image")
        times = interleaved(step_runs(name, overrides, batch, args.bf16), args.rounds, args.calls)
        for config, values in times.items():
            wall = [args.batch_size / w for w, _ in values]
            cpu = [args.batch_size / c for _, c in values]
            fraction = (f"{spread((flops * r / 1e9 / peak_gflops for r in cpu), '.0%')}" if peak_gflops else "-")
            print(f"    {config:16s} {spread(wall):>18s} | {spread(cpu):>18s} | "
                  f"{spread((1e3 * c for _, c in values), '.1f'):>18s} | {fraction}")
        for a, b in (("SAM fused", "base fused"), ("base fused", "base"), ("base fused NCHW", "base fused"),
                     ("base fused bf16", "base fused")):
            if a in times and b in times:
                ratios = [ca / cb for (_, ca), (_, cb) in zip(times[a], times[b])]
                print(f"    {a} / {b}: {spread(ratios, '.2f')} (CPU time per step, per round)")
        summary[spec] = {"flops": flops, "times": times}
    return summary


# --------------------------------------------------------------------------- 3. loader

def loader(args) -> None:
    from vitsam.data import Loader, load_source
    from vitsam.data.transforms import random_resized_crop, sample_crop_boxes, sample_flips, sampled_crop

    torch.set_num_threads(1)
    source = load_source("fashion_mnist", "train")
    demo = Loader(source, args.batch_size, train=True, img_size=28, crop_scale=(1.0, 1.0))
    order = demo.epoch_indices(0)
    step = iter(range(10 ** 9))

    def before():  # the same boxes and flips, resampled by grid_sample as every batch was
        index = demo.batch_indices(order, next(step) % len(demo))
        images, generator = source.images[index], demo.augment_generator(0, 0)
        sizes = torch.tensor([[28, 28]]).expand(len(images), 2)
        boxes = sample_crop_boxes(sizes, (1.0, 1.0), demo.crop_ratio, generator)
        return sampled_crop(images, boxes, sample_flips(len(images), generator), 28)

    def now():
        return demo._tensor_batch(order, 0, next(step) % len(demo))

    def inception():
        index = demo.batch_indices(order, next(step) % len(demo))
        return random_resized_crop(source.images[index], 28, demo.augment_generator(0, 0))

    times = interleaved({"grid_sample (before)": before, "gathered (now)": now, "Inception crop": inception},
                        args.rounds, 50)
    print(f"\n== 3. loader: one batch of {args.batch_size} from Fashion-MNIST, 1 thread ({load()})")
    for config, values in times.items():
        print(f"  {config:22s} {spread((1e3 * c for _, c in values), '.2f')} CPU ms per batch")
    ratios = [b[1] / n[1] for b, n in zip(times["grid_sample (before)"], times["gathered (now)"])]
    print(f"  before / now: {spread(ratios, '.1f')}")


# --------------------------------------------------------------------------- 4. loop

def loop(args) -> None:
    from vitsam import presets
    from vitsam.data import Loader
    from vitsam.data.build import build_source
    from vitsam.train.loop import train

    torch.set_num_threads(1)
    short, long = 10, 60
    print(f"\n== 4. the training loop vs bare train_step: CPU ms per step, vit_tiny_fmnist preset, 1 thread, "
          f"{args.rounds} rounds ({load()})")
    overrides = ["train.threads=1", "train.progress=false", "train.device=\"cpu\""]
    cfg = {steps: presets.resolve("vit_tiny_fmnist", None, overrides + [f"train.stop_after_steps={steps}"])
           for steps in (short, long)}
    source = build_source(cfg[long].data, "train")
    data = Loader(source, cfg[long].train.batch_size, train=True, img_size=28,
                  crop_scale=tuple(cfg[long].data.crop_scale))
    batches = [b for _, b in zip(range(long - short), data.iterate(0))]
    torch.manual_seed(0)
    trainee = TrainingModule(create_model(cfg[long].model.name), Classification())
    optimizer = build_optimizer(trainee, cfg[long].optim, cfg[long].sam)

    def bare():
        for batch in batches:
            train_step(trainee, optimizer, batch, grad_clip=cfg[long].optim.grad_clip)

    loop_ms, bare_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # the loop's per-step CPU time: runs of `long` and `short` steps, differenced
            # (both load the data, build the model and write a checkpoint)
            cpu = {}
            for steps in (short, long):
                start = time.process_time()
                train(cfg[steps], Path(tmp) / f"run{r}-{steps}")
                cpu[steps] = time.process_time() - start
            loop_ms.append(1e3 * (cpu[long] - cpu[short]) / (long - short))
            bare_ms.append(1e3 * timed(bare, 1)[1] / len(batches))
    print(f"  loop {spread(loop_ms, '.1f')} ms, bare train_step {spread(bare_ms, '.1f')} ms; loop / bare "
          f"{spread((a / b for a, b in zip(loop_ms, bare_ms)), '.2f')} (per round)")


# --------------------------------------------------------------------------- 5. threads

def _worker(name: str, overrides: dict, batch_size: int, steps: int, threads: int, start, out) -> None:
    torch.set_num_threads(threads)
    model = create_model(name, **overrides)
    trainee = TrainingModule(model, Classification())
    optimizer = fused(build_optimizer(trainee, demo_optim(model.family), SAMConfig()))
    batch = (torch.rand(batch_size, model.in_chans, model.img_size, model.img_size),
             torch.randint(0, model.num_classes, (batch_size,)))
    train_step(trainee, optimizer, batch)
    start.wait()
    begin = time.perf_counter()
    for _ in range(steps):
        train_step(trainee, optimizer, batch)
    out.put(steps * batch_size / (time.perf_counter() - begin))


def processes_rate(spec: str, batch_size: int, steps: int, processes: int, threads: int) -> float:
    """Summed wall img/s of ``processes`` processes training at once with ``threads`` each."""
    name, overrides = parse_model(spec)
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=_worker, args=(name, overrides, batch_size, steps, threads, start, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    start.wait()
    rates = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def threads(args) -> None:
    print(f"\n== 5. threads: {args.thread_model} base step (fused), batch {args.batch_size}, wall img/s, "
          f"{args.rounds} rounds ({load()})")
    configs = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    rates = {config: [] for config in configs}
    for _ in range(args.rounds):
        for config, (processes, n) in configs.items():
            rates[config].append(processes_rate(args.thread_model, args.batch_size, args.calls * 2, processes, n))
    for config, values in rates.items():
        print(f"  {config:24s} {spread(values)} img/s (summed over processes)")
    one = rates["1 process x 1 thread"]
    for config in list(configs)[1:]:
        print(f"  {config} / 1 x 1: {spread((a / b for a, b in zip(rates[config], one)), '.2f')}")


# --------------------------------------------------------------------------- 6. compile

def compiled(args) -> None:
    torch.set_num_threads(1)
    print(f"\n== 6. torch.compile of the training module, batch {args.batch_size}, 1 thread ({load()})")
    for spec in args.models:
        name, overrides = parse_model(spec)
        batch = None
        runs, compile_s = {}, None
        for mode in ("eager", "compiled"):
            torch.manual_seed(0)
            model = create_model(name, **overrides)
            trainee = TrainingModule(model, Classification())
            if batch is None:
                batch = (torch.rand(args.batch_size, model.in_chans, model.img_size, model.img_size),
                         torch.randint(0, model.num_classes, (args.batch_size,)))
            optimizer = fused(build_optimizer(trainee, demo_optim(model.family), SAMConfig()))
            if mode == "compiled":
                trainee.compile()
                wall, cpu = time.perf_counter(), cpu_seconds() + cpu_seconds(children=True)
                try:
                    train_step(trainee, optimizer, batch)
                except Exception as err:  # noqa: BLE001 - report and go on: compile is optional
                    print(f"  {spec}: torch.compile failed ({type(err).__name__}: {str(err)[:200]})")
                    break
                compile_s = (time.perf_counter() - wall, cpu_seconds() + cpu_seconds(children=True) - cpu)
            runs[mode] = (lambda t=trainee, o=optimizer: train_step(t, o, batch))
        if len(runs) < 2:
            continue
        times = interleaved(runs, args.rounds, args.calls)
        ratios = [e[1] / c[1] for e, c in zip(times["eager"], times["compiled"])]
        print(f"  {spec}: first compiled step {compile_s[0]:.0f} s wall, {compile_s[1]:.0f} CPU-s (compiler "
              f"processes included); CPU ms/step eager {spread((1e3 * c for _, c in times['eager']), '.1f')}, "
              f"compiled {spread((1e3 * c for _, c in times['compiled']), '.1f')}; eager / compiled "
              f"{spread(ratios, '.2f')}")


# --------------------------------------------------------------------------- 7. decode

def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like uint8 (H, W, 3) image: smooth shading plus fine texture (JPEG-sized like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y), np.sin(4 * (x + y))], -1)
    texture = rng.normal(0, 0.08, (height, width, 1))
    return np.round(255 * np.clip(0.5 + 0.35 * base + texture, 0, 1)).astype(np.uint8)


def decode(args) -> None:
    from PIL import Image

    from vitsam.data import Loader, load_source
    from vitsam.data import loader as loader_module

    print(f"\n== 7. JPEG decoding: folder loader, 1 process, img/s ({load()})")
    count = 32
    draft = loader_module.jpeg_draft
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in ((375, 500), (768, 1024)):
            root = Path(tmp) / f"{width}x{height}"
            for i in range(count):
                path = root / "train" / f"c{i % 2}" / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(photo(height, width, i)).save(path, quality=90)
            source = load_source(f"folder:{root}", "train")
            for size in (224, 128):
                for train in (True, False):
                    data = Loader(source, count, train=train, img_size=size, seed=0)

                    def reduced():
                        loader_module.jpeg_draft = draft
                        next(iter(data))

                    def full():  # the same crops from full-size decodes, as before
                        loader_module.jpeg_draft = lambda image, box, size: box
                        try:
                            next(iter(data))
                        finally:
                            loader_module.jpeg_draft = draft

                    times = interleaved({"reduced": reduced, "full": full}, max(2, args.rounds // 2), 1)
                    rates = {k: [count / c for _, c in v] for k, v in times.items()}
                    ratio = [f / r for (_, r), (_, f) in zip(times["reduced"], times["full"])]
                    what = "train (Inception crop)" if train else "eval (center crop)"
                    print(f"  {width}x{height} -> {size} px, {what:22s} reduced scale {spread(rates['reduced'])} "
                          f"img per CPU-s, full decode {spread(rates['full'])}; speed-up {spread(ratio, '.2f')}")


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEMO_MODELS + VARIANTS,
                        help="name or name:key=value,... (create_model overrides, JSON values)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes per model)")
    parser.add_argument("--decode", action="store_true", help="also time JPEG decoding (folder loader)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="steps per configuration per round")
    parser.add_argument("--n", type=int, default=2048, help="sgemm size")
    parser.add_argument("--thread-model", default="vit_tiny")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {load()} at the start")
    peak_gflops = peak(args) if "peak" in args.sections else None
    if "models" in args.sections:
        models(args, peak_gflops)
    if "loader" in args.sections:
        loader(args)
    if "loop" in args.sections:
        loop(args)
    if "threads" in args.sections:
        threads(args)
    if args.compile:
        compiled(args)
    if args.decode:
        decode(args)
    print(f"\n{load()} at the end")


if __name__ == "__main__":
    main()
