"""The main job: small ViT, Mixer and ResNet on Fashion-MNIST with and without SAM, in a
data-limited regime trained to convergence (where the paper's effects can appear; see
docs/calibration.md), then one report with the paper's numbers beside ours and a claims
scoreboard whose verdicts are computed from the numbers.

    plan -> train (runs in parallel, one thread each) -> evaluate (geometry, robustness)
         -> vitsam.report.build_report -> OUT/report.html, OUT/claims.json

Every step is resumable: a finished run (its eval.json exists) is reused, an interrupted
one continues from its checkpoint, a measured result is reused while the weights and
options are the same.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from vitsam import presets
from vitsam.analysis import report as geometry_report
from vitsam.config import Config
from vitsam.errors import unknown_choice

FAMILIES = ("vit", "mixer", "resnet")


@dataclass(frozen=True)
class DemoPlan:
    """What a demo preset trains: each family vanilla + SAM at its preset's training
    fraction for every seed, plus ViT at the (fraction, epochs) of ``vit_fractions``
    (the data-efficiency claim needs three fractions at least; a smaller fraction gets
    more epochs so that SAM still fits it: docs/calibration.md), every run
    ``epochs_scale`` times its epochs."""
    seeds: tuple = (0,)
    vit_fractions: tuple = ()
    epochs_scale: float = 1.0
    corruption_images: int = 1000
    attack_images: int = 500
    workers: int = 2                     # runs trained / evaluated at once (one thread each on a CPU)


DEMO_PLANS = {
    # 2-core CPU, about 11 minutes in all (README): the calibrated regime, one seed (a
    # second seed gives intervals over seeds of t(1 dof) = 12.7 x the spread: too wide to
    # decide anything, for 6 more minutes of training)
    "quick": DemoPlan(seeds=(0,), vit_fractions=((0.005, 200.0), (0.02, 100.0))),
    # a GPU or a long afternoon: five seeds (what separates Mixer's gain from ResNet's at
    # this scale, docs/calibration.md) and two more fractions
    "full": DemoPlan(seeds=(0, 1, 2, 3, 4), vit_fractions=((0.005, 200.0), (0.02, 100.0), (0.05, 100.0),
                                                           (0.1, 100.0))),
}


@dataclass
class DemoRun:
    key: str            # "vit", "vit_sam", "vit_f0.1_sam", "vit_s1", ...
    family: str
    sam: bool
    main: bool          # a run at the family's main fraction: fully measured
    config: Config
    run_dir: Path
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.key.replace("_sam", "-SAM")


def _resolve(family: str, sam: bool, overrides: list[str]) -> Config:
    return presets.resolve(f"{family}_tiny_fmnist" + ("_sam" if sam else ""), None, overrides)


def plan(preset: str, out: Path, data_dir: str | None, device: str, only: str | None) -> list[DemoRun]:
    if preset not in DEMO_PLANS:
        raise unknown_choice("demo preset", preset, DEMO_PLANS)
    spec = DEMO_PLANS[preset]
    runs = []
    base = [f'train.device="{device}"', "train.progress=false", "train.threads=1"]
    for family in FAMILIES:
        for seed in spec.seeds:
            for sam in (False, True):
                suffix = (f"_s{seed}" if seed else "") + ("_sam" if sam else "")
                cfg = _resolve(family, sam, base + [f"train.seed={seed}", f"data.subset_seed={seed}"])
                runs.append(DemoRun(f"{family}{suffix}", family, sam, True, cfg, out / f"{family}{suffix}"))
    main_vit = _resolve("vit", False, base).data.train_fraction
    for fraction, epochs in spec.vit_fractions:
        if fraction == main_vit:
            continue
        for sam in (False, True):
            key = f"vit_f{fraction:g}" + ("_sam" if sam else "")
            cfg = _resolve("vit", sam, base + [f"data.train_fraction={fraction}", f"train.epochs={epochs}"])
            runs.append(DemoRun(key, "vit", sam, False, cfg, out / key))
    if only:
        keys = {run.key for run in runs}
        chosen = [k.strip() for k in only.split(",") if k.strip()]
        for key in chosen:
            if key not in keys:
                raise unknown_choice("demo run", key, sorted(keys))
        runs = [run for run in runs if run.key in chosen]
    for run in runs:
        run.config.train.epochs *= spec.epochs_scale
        run.config.data.data_dir = data_dir or run.config.data.data_dir
    return runs


# --------------------------------------------------------------------------- parallel work

def _worker_setup() -> None:
    """One thread, and plain progress lines: two workers share the terminal."""
    import torch

    from vitsam.progress import PLAIN_ENV

    torch.set_num_threads(1)
    os.environ[PLAIN_ENV] = "1"


def _train_one(cfg: Config, run_dir: str) -> float:
    """In a worker process: train (or resume) one run with one thread."""
    from vitsam.train.loop import train

    _worker_setup()
    start = time.perf_counter()
    train(cfg, run_dir, resume=(Path(run_dir) / "checkpoints" / "last.pt").exists())
    return time.perf_counter() - start


def _evaluate_one(run_dir: str, requests: list, device: str) -> float:
    """In a worker process: run (or reuse) the measurements of one run with one thread."""
    from vitsam.evaluators.protocol import measure

    _worker_setup()
    start = time.perf_counter()
    measure(run_dir, requests, device=device, log=lambda text: print(f"[demo] {text}", flush=True))
    return time.perf_counter() - start


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: a clean interpreter per worker (torch's thread pools do not survive fork well)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def train_runs(runs: list[DemoRun], workers: int) -> None:
    todo = [run for run in runs if not (run.run_dir / "eval.json").exists()]
    for run in runs:
        if run not in todo:
            print(f"[demo] {run.key}: finished earlier, reusing {run.run_dir}")
    # the longest first (SAM, then more data), so two workers finish together
    todo.sort(key=lambda r: (r.sam, r.config.data.train_fraction * r.config.train.epochs), reverse=True)
    with _pool(workers) as pool:
        futures = {run.key: pool.submit(_train_one, run.config, str(run.run_dir)) for run in todo}
        for run in todo:
            run.seconds = futures[run.key].result()
            print(f"[demo] {run.key}: trained in {run.seconds:.0f}s", flush=True)


# lambda_max on every seed, training and held-out images (the claims need both seeds)
LAMBDA_MAX = {**geometry_report.LAMBDA_MAX, "examples": 512, "subsets": 4, "tol": 1e-2}
# the first seed's full Hessian picture within the quick demo's budget (2 CPU cores): the
# same 512 images as the other seeds' lambda_max (the claims compare seeds), a coarse
# spectrum (1 probe x 20 Lanczos steps), a 2-probe trace, per-block lambda_max to 1% or 15
# steps (the per-block table marks the blocks that stop short)
HESSIAN = {"examples": 512, "subsets": 4, "tol": 1e-2, "max_steps": 40, "density_steps": 20,
           "density_vectors": 1, "trace_samples": 2, "block_max_steps": 15}
# the trace kernel (the headline) and the full one (the paper's J J^T over all outputs)
NTK = {"blocks": 8, "block_size": 16, "kernels": "trace,full"}


def measurements(run: DemoRun, spec: DemoPlan) -> list[tuple[str, dict]]:
    """Every main run: lambda_max on training and held-out images, activation sparsity.
    The first seed's main runs: everything the report draws (the per-block table, the
    spectrum, NTK, landscapes, attention, corruptions, attacks). Other runs: their test
    accuracy alone (from training)."""
    if not run.main:
        return []
    requests = [("hessian", {**LAMBDA_MAX, "split": "val"}), ("sparsity", {})]
    if run.config.train.seed == spec.seeds[0]:
        requests += [("hessian", HESSIAN), ("ntk", NTK), ("landscape", {}), ("perturbed", {}),
                     ("corruptions", {"images": spec.corruption_images}), ("attack", {"images": spec.attack_images})]
        if run.family == "vit":
            requests.append(("attention", {}))
    else:
        requests.append(("hessian", LAMBDA_MAX))
    return requests


def evaluate_runs(runs: list[DemoRun], spec: DemoPlan, device: str) -> None:
    jobs = [(run, measurements(run, spec)) for run in runs]
    jobs = sorted([job for job in jobs if job[1]], key=lambda job: -len(job[1]))   # the longest first
    with _pool(spec.workers) as pool:
        futures = [pool.submit(_evaluate_one, str(run.run_dir), requests, device) for run, requests in jobs]
        for future in futures:
            future.result()
    interpolate_pairs(runs, spec, device)


def interpolate_pairs(runs: list[DemoRun], spec: DemoPlan, device: str) -> None:
    """The vanilla -> SAM weight interpolation of each family's first-seed main pair."""
    first = {(run.family, run.sam): run for run in runs if run.main and run.config.train.seed == spec.seeds[0]}
    for family in FAMILIES:
        if (family, False) in first and (family, True) in first:
            geometry_report.measure_interpolation(first[family, False].run_dir, first[family, True].run_dir, device=device,
                                  log=lambda text: print(f"[demo] {text}", flush=True))


def run_demo(preset: str = "quick", out: str | Path = "runs/demo", data_dir: str | None = None,
             only: str | None = None, device: str = "auto") -> Path:
    from vitsam.report.build import build_report

    out = Path(out)
    runs = plan(preset, out, data_dir, device, only)
    spec = DEMO_PLANS[preset]
    if device != "cpu" and _has_gpu():
        spec = replace(spec, workers=1)   # one GPU: one run at a time, all its threads
    timings, start = {}, time.perf_counter()
    train_runs(runs, spec.workers)
    timings["training"] = time.perf_counter() - start
    start = time.perf_counter()
    evaluate_runs(runs, spec, device)
    timings["evaluation"] = time.perf_counter() - start
    start = time.perf_counter()
    report = build_report([run.run_dir for run in runs], out / "report.html",
                          title="vitsam demo: ViT, Mixer and ResNet with and without SAM on Fashion-MNIST",
                          labels=[run.label for run in runs], evaluate=False, device=device,
                          timings={**timings}, log=lambda text: print(f"[demo] {text}"))
    print(f"[demo] report in {time.perf_counter() - start:.0f}s")
    return report


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""
