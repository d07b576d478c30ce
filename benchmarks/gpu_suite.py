"""The GPU paths, measured in one go (run through benchmarks/gpu_suite.sh: at most 8 minutes,
no network). Every figure comes from this run; nothing is assumed but the device's peak.

1. device: name, memory, the dense bf16 peak assumed (NVIDIA's datasheet, without
   sparsity) and a measured large bf16 matmul for comparison.
2. training img/s of ViT-B/16 (AdamW, clipping at 1) and ResNet-50 (SGD + momentum,
   channels-last) at 224 px through ``vitsam.train.step.train_step``: bf16 autocast,
   fused optimizer, the fused attention kernel; timm's ``vit_base_patch16_224`` and
   ``resnet50`` under the same settings when timm imports (skipped otherwise); model FLOPs
   utilisation = FLOPs per image (forward + backward, ``FlopCounterMode``) x img/s / peak.
3. SAM / base step time, interleaved rounds (the SAM wrapper around the fused optimizer).
4. Hessian lambda_max of ViT-B/16 (``vitsam.analysis.hessian.top_eigenvalues``, k=1, fp32):
   wall time and peak GPU memory.
5. the data pipeline: the folder loader's img/s on generated 500x375 JPEGs at 224 px with
   one worker per CPU core and pinned memory, beside the training img/s it must feed.
6. ``torch.compile`` (``vitsam.models.compilation.compile_in_place``) of the training
   module: compile time, compiled img/s and SAM / base, for ours and then timm's, while
   the time budget lasts (a stage that does not fit is skipped and says so).

    benchmarks/gpu_suite.sh [--dry-run] [--batch-size 256] [--budget 450] [--no-compile]

``--dry-run``: the same code paths at toy size on whatever device is there (a CPU: a
one-block ViT at 32 px, a narrow ResNet, a few JPEGs), in about a minute; add
``--compile`` to try the compile stages too (minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # runs from a bare checkout too

from bench_throughput import photo, spread  # noqa: E402  (this folder: generated JPEGs, median [min-max])
from vitsam.models import create_model, explicit_attention  # noqa: E402
from vitsam.models.compilation import compile_in_place  # noqa: E402
from vitsam.optim import SAM, parameter_groups  # noqa: E402
from vitsam.train.objectives import Classification, TrainingModule  # noqa: E402
from vitsam.train.step import train_step  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's datasheets; the
# first name contained in torch.cuda.get_device_name() wins.
BF16_PEAKS = [("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
              ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)]


@dataclass
class Suite:
    args: argparse.Namespace
    device: torch.device
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.start)

    def fits(self, stage: str, seconds: float) -> bool:
        if self.left() >= seconds:
            return True
        print(f"  [skipped] {stage}: needs about {seconds:.0f} s, {self.left():.0f} s of the budget left")
        return False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# --------------------------------------------------------------------------- models and steps

@dataclass
class Workload:
    label: str
    family: str                 # "vit" or "resnet": the paper's optimizer for it
    build: object               # () -> nn.Module taking images in [0, 1]
    img_size: int
    num_classes: int


def workloads(args) -> tuple[list[Workload], list[Workload]]:
    """(ours, timm's): ViT-B/16 and ResNet-50, or their toy versions in a dry run."""
    toy = args.dry_run
    vit_kw = dict(img_size=32, depth=1, num_classes=10) if toy else {}
    resnet_kw = dict(img_size=32, layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=10) if toy else {}
    size, classes = (32, 10) if toy else (224, 1000)
    ours = [Workload("vitsam vit_b16", "vit", lambda: create_model("vit_b16", **vit_kw), size, classes),
            Workload("vitsam resnet50", "resnet", lambda: create_model("resnet50", **resnet_kw), size, classes)]
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - timm is optional: any import failure skips it
        print(f"  timm does not import ({type(err).__name__}: {err}); its rows are skipped")
        return ours, []
    timm_vit = dict(img_size=32, depth=1, num_classes=10) if toy else {}
    theirs = [Workload("timm vit_base_patch16_224", "vit",
                       lambda: timm.create_model("vit_base_patch16_224", **timm_vit), size, classes),
              Workload("timm resnet50", "resnet",
                       lambda: timm.create_model("resnet50", num_classes=classes).to(memory_format=torch.channels_last),
                       size, classes)]
    return ours, theirs


def optimizer_for(model, family: str) -> torch.optim.Optimizer:
    """The paper's base optimizers, fused where the device has the kernel (else torch's default)."""
    cls, settings = ((torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.3)) if family == "vit" else
                     (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-4)))
    groups = parameter_groups(model, settings["weight_decay"])
    try:
        return cls(groups, **settings, fused=True)
    except (RuntimeError, ValueError) as err:
        print(f"  fused {cls.__name__} unavailable here ({err}); torch's default kernel instead")
        return cls(groups, **settings)


def batch_for(work: Workload, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(batch_size, 3, work.img_size, work.img_size, device=device)
    if work.family == "resnet":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, work.num_classes, (batch_size,), device=device)


class Trainer:
    """One model on the device with its optimizer (base, or SAM around it) and a fixed batch."""

    def __init__(self, suite: Suite, work: Workload, sam: bool = False, compiled: bool = False):
        torch.manual_seed(0)
        self.suite, self.work = suite, work
        self.model = work.build().to(suite.device)
        self.trainee = TrainingModule(self.model, Classification())
        base = optimizer_for(self.model, work.family)
        self.optimizer = SAM(None, base, rho=0.05) if sam else base
        self.batch = batch_for(work, suite.args.batch_size, suite.device)
        self.clip = 1.0 if work.family == "vit" else 0.0
        self.compile_s, self.failed_frames = None, 0
        if compiled:
            from torch._dynamo.utils import counters

            frames = counters["frames"]
            failed = frames["total"] - frames["ok"]
            compile_in_place(self.trainee)
            start = time.perf_counter()
            self.step()
            self.suite.sync()
            self.compile_s = time.perf_counter() - start
            self.failed_frames = frames["total"] - frames["ok"] - failed  # > 0: some code runs eagerly

    def compile_note(self) -> str:
        if self.compile_s is None:
            return ""
        failed = (f"; {self.failed_frames} frames FAILED to compile and run eagerly (torch logged why)"
                  if self.failed_frames else "")
        return f", compiled in {self.compile_s:.0f} s{failed}"

    def step(self):
        return train_step(self.trainee, self.optimizer, self.batch, grad_clip=self.clip,
                          autocast_dtype=self.suite.args.autocast)

    def seconds_per_step(self, steps: int) -> float:
        self.suite.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.suite.sync()
        return (time.perf_counter() - start) / steps


def flops_per_image(work: Workload, device) -> float:
    """Forward + backward FLOPs per image, attention written out (every device's counter sees it)."""
    model = work.build().to(device)
    images, labels = batch_for(work, 2, device)
    with explicit_attention(model), FlopCounterMode(display=False) as counter:
        TrainingModule(model, Classification())((images, labels))[0].backward()
    return counter.get_total_flops() / 2


# --------------------------------------------------------------------------- stages

def device_stage(suite: Suite) -> float | None:
    device = suite.device
    print(f"\n== 1. device: {device}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    n = 512 if suite.args.dry_run else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ a
    suite.sync()
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    suite.sync()
    measured = 5 * 2 * n ** 3 / (time.perf_counter() - start)
    if device.type != "cuda":
        print(f"  no GPU: no datasheet peak; bf16 matmul {n}^3 measured {measured / 1e12:.3f} TFLOP/s")
        return None
    name = torch.cuda.get_device_name(device)
    memory = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    peak = next((value for key, value in BF16_PEAKS if key in name), None)
    assumed = f"assumed dense bf16 peak {peak / 1e12:.0f} TFLOP/s (NVIDIA datasheet, without sparsity)" \
        if peak else "no datasheet peak known for it: utilisation against the measured matmul instead"
    print(f"  {name}, {memory:.0f} GiB; {assumed}; bf16 matmul {n}^3 measured {measured / 1e12:.0f} TFLOP/s")
    return peak or measured


def throughput_stage(suite: Suite, works: list[Workload], peak: float | None, compiled: bool = False) -> dict:
    args = suite.args
    rates = {}
    for work in works:
        if not suite.fits(f"{work.label} {'compiled' if compiled else 'eager'}", 150 if compiled else 30):
            continue
        try:
            if suite.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(suite.device)
            trainer = Trainer(suite, work, compiled=compiled)
            for _ in range(args.warmup):
                trainer.step()
            seconds = [trainer.seconds_per_step(args.steps) for _ in range(args.rounds)]
        except Exception as err:  # noqa: BLE001 - one failing row must not end the suite
            print(f"  {work.label}: failed ({type(err).__name__}: {str(err)[:300]})")
            continue
        img_s = [args.batch_size / s for s in seconds]
        flops = flops_per_image(work, suite.device)
        mfu = f", MFU {spread((flops * r / peak for r in img_s), '.1%')}" if peak else ""
        memory = (f", peak memory {torch.cuda.max_memory_allocated(suite.device) / 2 ** 30:.1f} GiB"
                  if suite.device.type == "cuda" else "")
        print(f"  {work.label:28s} {spread(img_s)} img/s ({flops / 1e9:.3g} GFLOP per training image{mfu}"
              f"{memory}{trainer.compile_note()})")
        rates[work.label] = statistics.median(img_s)
        del trainer
        release(suite)
    return rates


def sam_stage(suite: Suite, work: Workload, compiled: bool = False) -> None:
    if not suite.fits(f"SAM / base, {work.label}", 300 if compiled else 40):
        return
    args = suite.args
    try:
        trainers = {"base": Trainer(suite, work, compiled=compiled), "SAM": Trainer(suite, work, sam=True,
                                                                                     compiled=compiled)}
        for trainer in trainers.values():
            for _ in range(args.warmup):
                trainer.step()
        times = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(trainer.seconds_per_step(args.steps))
    except Exception as err:  # noqa: BLE001
        print(f"  SAM / base, {work.label}: failed ({type(err).__name__}: {str(err)[:300]})")
        return
    ratios = [s / b for s, b in zip(times["SAM"], times["base"])]
    ms = {name: spread((1e3 * t for t in values), ".1f") for name, values in times.items()}
    print(f"  {work.label}{' compiled' if compiled else ''}: SAM / base step time {spread(ratios, '.2f')} "
          f"(base {ms['base']} ms, SAM {ms['SAM']} ms{trainers['SAM'].compile_note()})")
    del trainers
    release(suite)


def hessian_stage(suite: Suite, work: Workload) -> None:
    from vitsam.analysis import cross_entropy
    from vitsam.analysis.hessian import top_eigenvalues

    if not suite.fits("Hessian lambda_max of ViT-B/16", 90):
        return
    args = suite.args
    torch.manual_seed(0)
    model = work.build().to(suite.device)
    batches = [batch_for(work, args.hessian_batch, suite.device) for _ in range(args.hessian_batches)]
    options = {"k": 1, "max_steps": args.hessian_steps, "tol": 1e-3}
    accepted = inspect.signature(top_eigenvalues).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    if suite.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(suite.device)
    before = torch.cuda.memory_allocated(suite.device) if suite.device.type == "cuda" else 0
    suite.sync()
    start = time.perf_counter()
    try:
        values = top_eigenvalues(model, cross_entropy, batches, **options)
    except Exception as err:  # noqa: BLE001
        print(f"  Hessian lambda_max: failed ({type(err).__name__}: {str(err)[:300]})")
        return
    suite.sync()
    seconds = time.perf_counter() - start
    memory = (f", peak memory {torch.cuda.max_memory_allocated(suite.device) / 2 ** 30:.1f} GiB "
              f"({before / 2 ** 30:.1f} GiB of it the model)" if suite.device.type == "cuda" else "")
    print(f"  {work.label} at initialisation, {args.hessian_batches} x {args.hessian_batch} images, fp32, "
          f"{options}: lambda_max {values[0]:.4g} in {seconds:.1f} s{memory}")
    del model, batches
    release(suite)


def data_stage(suite: Suite, train_rates: dict) -> None:
    from PIL import Image

    from vitsam.data import Loader, load_source

    if not suite.fits("JPEG data pipeline", 60):
        return
    args = suite.args
    count, (height, width), size = (16, (48, 64), 32) if args.dry_run else (1024, (375, 500), 224)
    batch = min(args.batch_size, count // 2)
    workers = 1 if args.dry_run else max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            path = Path(tmp) / "train" / f"c{i % 10}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(height, width, i)).save(path, quality=90)
        source = load_source(f"folder:{tmp}", "train")
        loader = Loader(source, batch, train=True, img_size=size, num_workers=workers, device=suite.device)
        rates = []
        for epoch in range(2):
            batches = iter(loader.iterate(epoch))
            next(batches)  # the workers start and fill their queues
            suite.sync()
            start, images = time.perf_counter(), 0
            for x, _ in batches:
                images += len(x)
            suite.sync()
            rates.append(images / (time.perf_counter() - start))
    fed = ", ".join(f"{label} trains at {rate:.0f}" for label, rate in train_rates.items())
    pinned = ", pinned memory" if suite.device.type == "cuda" else ""
    print(f"  {count} JPEGs {width}x{height} -> {size} px, Inception crop + flip, {workers} worker processes{pinned}: "
          f"{spread(rates)} img/s onto {suite.device} ({fed or 'no training rate measured'})")


def release(suite: Suite) -> None:
    if suite.device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes, on any device, in seconds")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (4 in a dry run)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all stages together")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="the torch.compile stages (default: on a GPU yes, in a dry run no)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()
    toy = args.dry_run
    args.batch_size = args.batch_size or (4 if toy else 256)
    args.warmup, args.steps, args.rounds = (1, 2, 2) if toy else (3, 10, 3)
    args.hessian_batch, args.hessian_batches, args.hessian_steps = (4, 2, 3) if toy else (64, 2, 20)
    args.autocast = None if args.fp32 else torch.bfloat16
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not toy:
        print("no GPU here: run with --dry-run to check the code paths on the CPU")
        sys.exit(2)
    suite = Suite(args, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 leftovers on TF32
        torch.backends.cudnn.benchmark = True
    print(f"gpu_suite{' (dry run)' if toy else ''}: batch {args.batch_size}, "
          f"{'bf16 autocast' if args.autocast else 'fp32'}, budget {args.budget:.0f} s")
    peak = device_stage(suite)
    ours, theirs = workloads(args)
    print(f"\n== 2. training img/s, eager, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps")
    rates = throughput_stage(suite, ours + theirs, peak)
    print("\n== 3. SAM / base, eager")
    for work in ours:
        sam_stage(suite, work)
    print("\n== 4. Hessian lambda_max")
    hessian_stage(suite, ours[0])
    print("\n== 5. data pipeline")
    data_stage(suite, rates)
    if args.compile if args.compile is not None else not toy:
        print("\n== 6. torch.compile (while the budget lasts)")
        throughput_stage(suite, ours, peak, compiled=True)
        sam_stage(suite, ours[0], compiled=True)
        throughput_stage(suite, theirs, peak, compiled=True)
    print(f"\ndone in {time.perf_counter() - suite.start:.0f} s")


if __name__ == "__main__":
    main()
