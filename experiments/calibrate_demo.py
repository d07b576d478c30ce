"""Calibration study for the demo (issue 13, item 1): where on a 2-core CPU budget do the
paper's findings appear? Small ViT, Mixer and ResNet on a class-balanced fraction of
Fashion-MNIST, trained to (near) zero training loss, vanilla and with SAM.

Every choice is made on a VALIDATION split (``data.val_fraction=0.1``: 6000 of the
60000 training images, class-balanced, disjoint from the training subset); the test
accuracy is recorded beside it but never used to choose.

Each configuration is one training run in its own process (one thread), at most
``--jobs`` at a time. A run appends one strict-JSON line to the results file with its
regime, wall and CPU time, final training loss (whole training subset, no augmentation),
validation and test accuracy and loss, and the per-image correctness (packed bits) so
that paired bootstrap intervals can be recomputed from the results file alone. The
``geometry`` stage also appends the Hessian lambda_max (power iteration) of the loss on
training images and on validation images. Configurations already in the results file are
skipped, so an interrupted study continues where it stopped. The stages, in the order they
ran (each was designed from the results of the ones before it; docs/calibration.md):
probe, vit_rho, mixer_rho, vit_long, mixer_long, resnet_long, vit_variants,
mixer_fractions, seeds, half_percent, vit_patch4, followups, geometry.

    python experiments/calibrate_demo.py --list                 # stages, grids, what is done
    python experiments/calibrate_demo.py --stage all            # reproduce every run (2 at a time)
    python experiments/calibrate_demo.py --stage vit_rho        # one stage
    python experiments/calibrate_demo.py --table                # the results as Markdown tables
    python experiments/calibrate_demo.py --write-doc            # ... into docs/calibration.md
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "calibration_results.jsonl"
RUNS = ROOT / "runs" / "calibration"
DOC = ROOT / "docs" / "calibration.md"
BEGIN, END = "<!-- calibration tables: begin (experiments/calibrate_demo.py --write-doc) -->", \
    "<!-- calibration tables: end -->"
VAL_FRACTION = 0.1
# Hessian lambda_max of the training loss (plain cross-entropy, model in eval mode, as the
# paper's Table 1) on a fixed class-stratified sample of the training subset, by power
# iteration stopped when the Rayleigh quotient moves by < 0.1% (PyHessian's criterion).
# Power iteration, not Lanczos: the library's Lanczos was being rewritten during the study
# and its in-progress version stopped after one step (see docs/calibration.md).
HESSIAN_EXAMPLES = 1024
HESSIAN_METHOD = "power"
HESSIAN_VERSION = 2   # 2: training AND validation images (1: training images only)
HESSIAN_TOL = 1e-3
HESSIAN_MAX_STEPS = 50
AUGMENTATIONS = {  # name -> (crop_scale, hflip)
    "none": ((1.0, 1.0), False),
    "flip": ((1.0, 1.0), True),
}


@dataclass(frozen=True)
class Spec:
    """One training run. ``model`` is a JSON object of create_model overrides ("{}": the
    preset's tiny model); None for weight_decay / lr keeps the family preset's value."""
    family: str                    # vit | mixer | resnet
    fraction: float                # data.train_fraction (of the 54000 images left after the hold-out)
    epochs: float
    rho: float = 0.0               # 0: the base optimizer alone
    weight_decay: float | None = None
    lr: float | None = None
    aug: str = "flip"
    model: str = "{}"
    batch_size: int = 128
    seed: int = 0                  # train.seed and data.subset_seed

    @property
    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def pair_key(self) -> str:
        """The same configuration without SAM: what a SAM run is compared with."""
        return dataclasses.replace(self, rho=0.0).key

    @property
    def dirname(self) -> str:
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:10]
        return f"{self.family}_f{self.fraction:g}_e{self.epochs:g}_rho{self.rho:g}_s{self.seed}_{digest}"

    def overrides(self) -> list[str]:
        crop, flip = AUGMENTATIONS[self.aug]
        out = [f"data.train_fraction={self.fraction}", f"data.val_fraction={VAL_FRACTION}",
               f"data.subset_seed={self.seed}", f"train.seed={self.seed}",
               f"train.epochs={self.epochs}", f"sam.rho={self.rho}", f"train.batch_size={self.batch_size}",
               f"data.crop_scale={json.dumps(list(crop))}", f"data.hflip={json.dumps(flip)}",
               f"model.overrides={self.model}", "train.threads=1", "train.progress=false",
               "train.eval_every_epochs=100000", "train.checkpoint_every=1000000000",
               "train.log_every=25", 'train.device="cpu"']
        if self.weight_decay is not None:
            out.append(f"optim.weight_decay={self.weight_decay}")
        if self.lr is not None:
            out.append(f"optim.lr={self.lr}")
        return out

    def config(self):
        from vitsam.presets import resolve
        return resolve(f"{self.family}_tiny_fmnist", None, self.overrides())


# --------------------------------------------------------------------------- the grids

def grid(base: dict, **axes) -> list[Spec]:
    """Every combination of the ``axes`` values on top of ``base``."""
    specs = [dict(base)]
    for name, values in axes.items():
        specs = [{**s, name: v} for s in specs for v in values]
    return [Spec(**s) for s in specs]


def model_json(**overrides) -> str:
    return json.dumps(overrides, sort_keys=True)


STAGES: dict[str, tuple[str, list[Spec], bool]] = {}   # name -> (purpose, specs, hessian)


def stage(name: str, purpose: str, specs: list[Spec], hessian: bool = False) -> None:
    STAGES[name] = (purpose, specs, hessian)


stage("probe", "cost per epoch and convergence of the preset tiny models on 2% of the data",
      grid(dict(fraction=0.02, epochs=40), family=["vit", "mixer", "resnet"], rho=[0.0]))
stage("vit_rho", "ViT rho sweep at 2%, 40 epochs (train loss ~1e-2), flip, wd 0.05",
      grid(dict(family="vit", fraction=0.02, epochs=40), rho=[0.0, 0.05, 0.1, 0.2, 0.4, 0.8]))
stage("mixer_rho", "Mixer rho sweep at 2%, 40 epochs, flip, wd 0.05",
      grid(dict(family="mixer", fraction=0.02, epochs=40), rho=[0.0, 0.1, 0.2, 0.4, 0.8]))
# 40 epochs leave SAM unconverged (train loss 0.07-0.3 against vanilla's 0.01): train longer.
stage("vit_long", "ViT trained longer (100 epochs) at 1% and 2%, so that SAM runs converge too",
      grid(dict(family="vit", epochs=100), fraction=[0.01], rho=[0.0, 0.1, 0.2, 0.4])
      + grid(dict(family="vit", epochs=100), fraction=[0.02], rho=[0.0, 0.2]))
stage("mixer_long", "Mixer trained longer (100 epochs) at 1%",
      grid(dict(family="mixer", fraction=0.01, epochs=100), rho=[0.0, 0.2, 0.5]))
stage("resnet_long", "ResNet (SGD, wd 5e-4) at 1%, 100 epochs: the preset and a half-width model",
      grid(dict(family="resnet", fraction=0.01, epochs=100), rho=[0.0, 0.05])
      + grid(dict(family="resnet", fraction=0.01, epochs=100, model=model_json(widths=[8, 16, 32])), rho=[0.0, 0.05]))
# lr 3e-3 at batch 128 is the paper's lr at 1/32 of its batch. A large lr already keeps the
# minimum flat (gradient descent cannot stay where lambda_max > 2 / lr; adaptive optimizers
# have a preconditioned analogue, Cohen et al. 2022), leaving SAM little to do; a smaller
# lr lets vanilla training settle in a sharper minimum.
stage("vit_variants", "ViT at 1%, 100 epochs: lr 1e-3; no augmentation; the paper's weight decay 0.3",
      grid(dict(family="vit", fraction=0.01, epochs=100, lr=1e-3), rho=[0.0, 0.1, 0.2])
      + grid(dict(family="vit", fraction=0.01, epochs=100, aug="none"), rho=[0.0, 0.2])
      + grid(dict(family="vit", fraction=0.01, epochs=100, weight_decay=0.3), rho=[0.0, 0.2]))
stage("mixer_fractions", "Mixer at 0.5% and 2% (100 epochs), rho 0.5, and a second seed at 1%",
      grid(dict(family="mixer", epochs=100), fraction=[0.005, 0.02], rho=[0.0, 0.5])
      + grid(dict(family="mixer", epochs=100, fraction=0.01, seed=1), rho=[0.0, 0.5]))
stage("seeds", "a second seed (training order, initial weights AND training subset) at 1%, 100 epochs",
      grid(dict(family="vit", fraction=0.01, epochs=100, seed=1), rho=[0.0, 0.1])
      + grid(dict(family="resnet", fraction=0.01, epochs=100, seed=1), rho=[0.0, 0.05]))
# 100 epochs of 270 images are 200 steps: too few for SAM to fit (Mixer rho 0.5: train loss
# 0.39). 200 epochs give the 400 steps of 1% x 100 epochs.
stage("half_percent", "ViT and Mixer at 0.5% (270 images), 200 epochs: the third fraction",
      grid(dict(family="vit", fraction=0.005, epochs=200), rho=[0.0, 0.1, 0.2])
      + grid(dict(family="mixer", fraction=0.005, epochs=200), rho=[0.0, 0.5]))
stage("vit_patch4", "ViT with 4x4 patches (49 tokens instead of 16; 3x the cost) at 1%, 100 epochs",
      grid(dict(family="vit", fraction=0.01, epochs=100, model=model_json(patch_size=4)), rho=[0.0, 0.1]))
stage("followups", "ViT at 2% with the rho chosen at 1% (0.1), for one rho across fractions; ResNet rho 0.1",
      [Spec("vit", 0.02, 100, rho=0.1), Spec("resnet", 0.01, 100, rho=0.1)])
stage("geometry", "Hessian lambda_max (training and validation images) of the candidate demo pairs",
      grid(dict(family="vit", fraction=0.01, epochs=100), seed=[0, 1], rho=[0.0, 0.1])
      + grid(dict(family="mixer", fraction=0.01, epochs=100), seed=[0, 1], rho=[0.0, 0.5])
      + grid(dict(family="resnet", fraction=0.01, epochs=100), seed=[0, 1], rho=[0.0, 0.05])
      + grid(dict(family="vit", fraction=0.02, epochs=100), rho=[0.0, 0.2]), hessian=True)



# --------------------------------------------------------------------------- one run (child)

def packbits(correct: np.ndarray) -> str:
    return np.packbits(correct.astype(bool)).tobytes().hex()


def unpackbits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_one(spec: Spec, run_dir: Path) -> dict:
    """Train ``spec`` into ``run_dir`` and measure it: the child process's job."""
    import torch

    from vitsam.data.build import eval_loader
    from vitsam.evaluators.accuracy import evaluate
    from vitsam.train.checkpoint import load_predictions, load_run
    from vitsam.train.loop import train

    torch.set_num_threads(1)
    cfg = spec.config()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    train(cfg, run_dir)
    train_cpu, train_wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    summary = json.loads((run_dir / "eval.json").read_text())
    model = load_run(run_dir).model
    fit = evaluate(model, eval_loader(cfg.data, "train", 1000), torch.device("cpu"))
    predictions = load_predictions(run_dir)
    correct = {split: predictions[f"{split}_predicted"] == predictions[f"{split}_labels"]
               for split in ("val", "test")}
    last_logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if '"train"' in line]
    return {
        "kind": "run", "key": spec.key, "spec": dataclasses.asdict(spec), "run_dir": str(run_dir.relative_to(ROOT)),
        "train_images": fit.images, "steps": summary["steps"], "parameters": summary["parameters"],
        "train_cpu_s": train_cpu, "train_wall_s": train_wall,
        "train_loss": fit.loss, "train_accuracy": fit.accuracy,
        "last_batch_loss": last_logged[-1].get("loss") if last_logged else None,
        "val_accuracy": summary["val_accuracy"], "val_loss": summary["val_loss"],
        "test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
        "val_correct": packbits(correct["val"]), "val_images": int(len(correct["val"])),
        "test_correct": packbits(correct["test"]), "test_images": int(len(correct["test"])),
        "torch": torch.__version__, "host_cpus": os.cpu_count(),
    }


def hessian_one(spec: Spec, run_dir: Path) -> dict:
    """lambda_max of the loss of a finished run on training images (the paper's measure)
    and on validation images. Near zero training loss the softmax saturates and the
    training-loss Hessian (J^T diag-block(p)(I - p) J) shrinks with the loss itself, so the
    first says how far the model memorised as much as how sharp its minimum is; the second
    is measured where the loss is not near zero."""
    import torch

    from vitsam.analysis import cross_entropy, evaluate
    from vitsam.analysis.hessian import top_eigenvalues
    from vitsam.data.build import eval_loader
    from vitsam.train.checkpoint import load_run

    torch.set_num_threads(1)
    run = load_run(run_dir)
    out = {"kind": "hessian", "key": spec.key, "version": HESSIAN_VERSION, "method": HESSIAN_METHOD,
           "tol": HESSIAN_TOL}
    for split, suffix in (("train", ""), ("val", "_val")):
        batches = list(eval_loader(run.config.data, split, 256, examples=HESSIAN_EXAMPLES).iterate(0))
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        values = top_eigenvalues(run.model, cross_entropy, batches, k=1, method=HESSIAN_METHOD,
                                 tol=HESSIAN_TOL, max_steps=HESSIAN_MAX_STEPS)
        out.update({f"lambda_max{suffix}": values[0], f"loss{suffix}": evaluate(run.model, batches)[0],
                    f"examples{suffix}": sum(len(y) for _, y in batches),
                    f"hessian_cpu_s{suffix}": cpu_seconds() - cpu0, f"hessian_wall_s{suffix}": time.perf_counter() - wall0})
    return out


def child(task: str, spec_json: str) -> None:
    spec = Spec(**json.loads(spec_json))
    run_dir = RUNS / spec.dirname
    out = train_one(spec, run_dir) if task == "train" else hessian_one(spec, run_dir)
    (run_dir / f"calibration_{task}.json").write_text(json.dumps(out))  # kept if the driver dies
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- the driver

def done_keys(results: list[dict]) -> set[tuple[str, str]]:
    """(kind, key) of finished work; a Hessian counts only if measured the current way."""
    return {(r["kind"], r["key"]) for r in results
            if r["kind"] == "run" or r.get("version") == HESSIAN_VERSION}


def read_results(path: Path = RESULTS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch(task: str, spec: Spec, path: Path) -> dict | None:
    """Run one task in a child process (one thread); append its result line."""
    saved = RUNS / spec.dirname / f"calibration_{task}.json"
    result = json.loads(saved.read_text()) if saved.is_file() else None
    if result is not None and (result["kind"], spec.key) in done_keys([result]):
        pass   # finished while an earlier driver was stopped
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        wall0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", task, spec.key], env=env,
                              capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"[calibrate] FAILED {task} {spec.dirname}:\n{proc.stderr[-3000:]}", flush=True)
            return None
        result = json.loads(lines[-1].removeprefix("RESULT "))
        result["process_wall_s"] = time.perf_counter() - wall0
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(path, "a") as f:   # one short write per line: appends from two threads do not interleave
        f.write(json.dumps(result) + "\n")
    print(f"[calibrate] {task} {spec.dirname}: " + summary_line(result), flush=True)
    return result


def summary_line(r: dict) -> str:
    if r["kind"] == "hessian":
        return (f"lambda_max train {r['lambda_max']:.2f} (loss {r['loss']:.1e}), val {r['lambda_max_val']:.2f} "
                f"(loss {r['loss_val']:.2f}) ({r['hessian_cpu_s'] + r['hessian_cpu_s_val']:.0f} cpu-s)")
    return (f"train loss {r['train_loss']:.2e}, val {100 * r['val_accuracy']:.2f}%, "
            f"test {100 * r['test_accuracy']:.2f}% ({r['train_cpu_s']:.0f} cpu-s, {r['train_wall_s']:.0f} s)")


def run_stage(names: list[str], jobs: int, path: Path) -> None:
    done = done_keys(read_results(path))
    todo: list[tuple[Spec, bool]] = []
    for name in names:
        _, specs, hessian = STAGES[name]
        todo += [(s, hessian) for s in specs if ("run", s.key) not in done or
                 (hessian and ("hessian", s.key) not in done)]
    print(f"[calibrate] {len(todo)} configurations to do, {jobs} at a time", flush=True)

    def one(item: tuple[Spec, bool]) -> None:
        spec, hessian = item
        if ("run", spec.key) not in done and launch("train", spec, path) is None:
            return
        if hessian and ("hessian", spec.key) not in done:
            launch("hessian", spec, path)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))


# --------------------------------------------------------------------------- tables

def regime(spec: dict) -> str:
    parts = [f"wd {spec['weight_decay']}" if spec["weight_decay"] is not None else "",
             f"lr {spec['lr']}" if spec["lr"] is not None else "",
             f"bs {spec['batch_size']}" if spec["batch_size"] != 128 else "",
             spec["model"] if spec["model"] != "{}" else ""]
    return ", ".join(p for p in parts if p) or "preset"


def pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def lambda_text(record: dict | None) -> str:
    return "" if record is None else f"{record['lambda_max']:.2f} / {record['lambda_max_val']:.1f}"


def gain_text(estimate) -> str:
    e = estimate.scaled(100)
    return f"{e.value:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"


def collect(results: list[dict]) -> tuple[dict, dict]:
    """key -> run record (the last one wins), key -> lambda_max."""
    runs = {r["key"]: r for r in results if r["kind"] == "run"}
    lambdas = {r["key"]: r for r in results if r["kind"] == "hessian" and r.get("version") == HESSIAN_VERSION}
    return runs, lambdas


def correct(run: dict, split: str) -> np.ndarray:
    return unpackbits(run[f"{split}_correct"], run[f"{split}_images"])


def pairs(runs: dict) -> list[tuple[dict, dict]]:
    """(vanilla, SAM) runs of the same configuration."""
    out = []
    for key, run in runs.items():
        if run["spec"]["rho"] > 0:
            base = runs.get(Spec(**run["spec"]).pair_key)
            if base is not None:
                out.append((base, run))
    return out


def tables(results: list[dict]) -> str:
    from vitsam.stats import paired_difference, seed_interval

    runs, lambdas = collect(results)
    lines = ["### Every run", "",
             "| family | fraction (images) | epochs | aug | regime | rho | seed | train loss | train acc | "
             "val acc | test acc | val loss | test loss | lambda_max train / val | CPU s | wall s |",
             "|" + "---|" * 16]
    order = sorted(runs.values(), key=lambda r: (r["spec"]["family"], r["spec"]["fraction"], r["spec"]["epochs"],
                                                  r["spec"]["aug"], regime(r["spec"]), r["spec"]["seed"], r["spec"]["rho"]))
    for r in order:
        s = r["spec"]
        lam = lambdas.get(r["key"])
        lines.append(f"| {s['family']} | {s['fraction']:g} ({r['train_images']}) | {s['epochs']:g} | {s['aug']} | "
                     f"{regime(s)} | {s['rho']:g} | {s['seed']} | {r['train_loss']:.1e} | {pct(r['train_accuracy'], 1)} | "
                     f"{pct(r['val_accuracy'])} | {pct(r['test_accuracy'])} | {r['val_loss']:.3f} | {r['test_loss']:.3f} | "
                     f"{lambda_text(lam)} | "
                     f"{r['train_cpu_s']:.0f} | {r['train_wall_s']:.0f} |")
    lines += ["", "### SAM minus vanilla (same configuration and seed; paired bootstrap 95% interval over images)", "",
              "| family | fraction | epochs | aug | regime | seed | rho | val gain (points) | test gain (points) | "
              "lambda_max vanilla -> SAM (ratio): train ; val | CPU s vanilla / SAM |",
              "|" + "---|" * 11]
    found = sorted(pairs(runs), key=lambda p: (p[1]["spec"]["family"], p[1]["spec"]["fraction"], p[1]["spec"]["epochs"],
                                               p[1]["spec"]["aug"], regime(p[1]["spec"]), p[1]["spec"]["seed"], p[1]["spec"]["rho"]))
    for base, sam in found:
        s = sam["spec"]
        val = paired_difference(correct(base, "val"), correct(sam, "val"))
        test = paired_difference(correct(base, "test"), correct(sam, "test"))
        lb, ls = lambdas.get(base["key"]), lambdas.get(sam["key"])
        geometry = " ; ".join(f"{lb[k]:.2f} -> {ls[k]:.2f} ({lb[k] / ls[k]:.2f}x)"
                              for k in ("lambda_max", "lambda_max_val")) if lb and ls else ""
        lines.append(f"| {s['family']} | {s['fraction']:g} | {s['epochs']:g} | {s['aug']} | {regime(s)} | {s['seed']} | "
                     f"{s['rho']:g} | {gain_text(val)} | {gain_text(test)} | {geometry} | "
                     f"{base['train_cpu_s']:.0f} / {sam['train_cpu_s']:.0f} |")
    # over seeds: the same configuration apart from the seed
    groups: dict[str, list] = {}
    for base, sam in found:
        groups.setdefault(json.dumps({**sam["spec"], "seed": None}, sort_keys=True), []).append((base, sam))
    multi = {k: v for k, v in groups.items() if len({p[1]["spec"]["seed"] for p in v}) > 1}
    if multi:
        lines += ["", "### Over seeds (mean SAM gain in points, Student-t 95% interval over seeds)", "",
                  "| family | fraction | epochs | aug | regime | rho | seeds | val gain | test gain | "
                  "vanilla val / test | SAM val / test | lambda_max ratio vanilla/SAM, train / val (mean) |", "|" + "---|" * 12]
        for key, group in sorted(multi.items()):
            s = json.loads(key)
            val = seed_interval([100 * (p[1]["val_accuracy"] - p[0]["val_accuracy"]) for p in group])
            test = seed_interval([100 * (p[1]["test_accuracy"] - p[0]["test_accuracy"]) for p in group])
            ratios = [lambdas[b["key"]]["lambda_max"] / lambdas[a["key"]]["lambda_max"]
                      for b, a in group if b["key"] in lambdas and a["key"] in lambdas]
            ratios_val = [lambdas[b["key"]]["lambda_max_val"] / lambdas[a["key"]]["lambda_max_val"]
                          for b, a in group if b["key"] in lambdas and a["key"] in lambdas]
            mean = lambda xs: float(np.mean(xs))
            lines.append(f"| {s['family']} | {s['fraction']:g} | {s['epochs']:g} | {s['aug']} | {regime(s)} | {s['rho']:g} | "
                         f"{len(group)} | {val.value:+.2f} [{val.low:+.2f}, {val.high:+.2f}] | "
                         f"{test.value:+.2f} [{test.low:+.2f}, {test.high:+.2f}] | "
                         f"{pct(mean([p[0]['val_accuracy'] for p in group]))} / {pct(mean([p[0]['test_accuracy'] for p in group]))} | "
                         f"{pct(mean([p[1]['val_accuracy'] for p in group]))} / {pct(mean([p[1]['test_accuracy'] for p in group]))} | "
                         f"{f'{mean(ratios):.2f}x / {mean(ratios_val):.2f}x' if ratios else ''} |")
    return "\n".join(lines)


def write_doc(text: str, path: Path | None = None) -> None:
    """Replace what lies between the two table markers of the calibration doc."""
    path = path or DOC
    doc = path.read_text()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", nargs="+", choices=["all", *STAGES],
                        help="stages to run, in the order given ('all': every stage, in the order they ran)")
    parser.add_argument("--list", action="store_true", help="list the stages and their configurations")
    parser.add_argument("--table", action="store_true", help="print the results as Markdown tables")
    parser.add_argument("--write-doc", action="store_true",
                        help=f"put the tables into {DOC.relative_to(ROOT)} (between its table markers)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at a time (one thread each)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file (JSON lines)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if args.list:
        done = done_keys(read_results(args.results))
        for name, (purpose, specs, hessian) in STAGES.items():
            finished = sum(("run", s.key) in done for s in specs)
            print(f"{name}: {purpose} ({finished}/{len(specs)} done{', + Hessian' if hessian else ''})")
            for s in specs:
                print(f"    {'x' if ('run', s.key) in done else ' '} {s.dirname}  {s.key}")
    if args.stage:
        run_stage(list(STAGES) if "all" in args.stage else args.stage, args.jobs, args.results)
    if args.table:
        print(tables(read_results(args.results)))
    if args.write_doc:
        write_doc(tables(read_results(args.results)))


if __name__ == "__main__":
    main()
