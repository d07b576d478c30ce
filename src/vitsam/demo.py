"""The main job: small ViT, Mixer and ResNet on Fashion-MNIST, each with its base optimizer
and with SAM, then an HTML report shaped like the paper's tables.

Every step is resumable: a finished run (its eval.json exists) is reused, an interrupted
one continues from its checkpoint, an analysis whose result exists is not redone.
The report is a list of pluggable stages; each stage computes what it needs for the
runs and returns a ``Section`` (training here, geometry and robustness in their packages).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vitsam import presets
from vitsam.config import Config
from vitsam.errors import unknown_choice
from vitsam.report import html
from vitsam.train.metrics import read_metrics

FAMILIES = ("vit", "mixer", "resnet")
FAMILY_NAMES = {"vit": "ViT", "mixer": "Mixer", "resnet": "ResNet"}


@dataclass
class DemoRun:
    key: str            # "vit", "vit_sam", ...
    family: str
    sam: bool
    config: Config
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.config.model.name}" + ("-SAM" if self.sam else "")

    def summary(self) -> dict:
        return json.loads((self.run_dir / "eval.json").read_text())


# Overrides on top of each family's Fashion-MNIST preset. quick: the presets as they are
# (2-core CPU, each model >= 85% test accuracy); full: the longer version for a GPU.
DEMO_PRESETS: dict[str, list[str]] = {
    "quick": [],
    "full": ["train.epochs=40", "train.batch_size=256", "train.precision=\"bf16\""],
}


def plan(preset: str, out: Path, data_dir: str | None, device: str, only: str | None) -> list[DemoRun]:
    if preset not in DEMO_PRESETS:
        raise unknown_choice("demo preset", preset, DEMO_PRESETS)
    keys = [f"{family}{suffix}" for family in FAMILIES for suffix in ("", "_sam")]
    chosen = keys if not only else [k.strip() for k in only.split(",") if k.strip()]
    for key in chosen:
        if key not in keys:
            raise unknown_choice("demo run", key, keys)
    runs = []
    for key in chosen:
        family, sam = key.removesuffix("_sam"), key.endswith("_sam")
        cfg = presets.resolve(f"{family}_tiny_fmnist" + ("_sam" if sam else ""), None,
                                 DEMO_PRESETS[preset] + [f"train.device=\"{device}\""])
        if data_dir:
            cfg.data.data_dir = data_dir
        runs.append(DemoRun(key, family, sam, cfg, out / key))
    return runs


def train_runs(runs: list[DemoRun]) -> None:
    from vitsam.train.loop import train

    for run in runs:
        if (run.run_dir / "eval.json").exists():
            print(f"[demo] {run.key}: finished earlier, reusing {run.run_dir}")
            continue
        print(f"[demo] {run.key}: training {run.config.model.name} (sam.rho={run.config.sam.rho})")
        start = time.perf_counter()
        train(run.config, run.run_dir, resume=(run.run_dir / "checkpoints" / "last.pt").exists())
        result = run.summary()
        print(f"[demo] {run.key}: test accuracy {result['test_accuracy']:.4f} "
              f"in {time.perf_counter() - start:.0f}s")


# --------------------------------------------------------------------------- training section

def training_section(runs: list[DemoRun]) -> html.Section:
    section = html.Section("Accuracy and throughput (shaped like the paper's Table 2)")
    section.add(html.paragraph(
        "Each small model trained from scratch on Fashion-MNIST with Inception-style crop + flip only, "
        "with its base optimizer and with SAM. Throughput is training images per second on this "
        "machine (SAM runs do two forward/backward passes per step). The paper reports +0.7 to +11.0 "
        "top-1 on ImageNet, largest for Mixer and ViT; on a small easy data set the gains are smaller."))
    by_key = {run.key: run for run in runs}
    rows = []
    for run in runs:
        result = run.summary()
        accuracy = 100 * result["test_accuracy"]
        cell: object = f"{accuracy:.2f}"
        base = by_key.get(run.family)
        if run.sam and base is not None:
            gain = accuracy - 100 * base.summary()["test_accuracy"]
            cell = (f"{accuracy:.2f} ({gain:+.2f})", "good" if gain > 0 else "bad")
        rows.append([run.label, f"{result['parameters'] / 1e3:.0f}k", f"{result['train_images_per_s']:.0f}",
                     f"{run.config.sam.rho:g}", f"{run.config.train.epochs:g}", cell])
    section.add(html.table(["Model", "#params", "Train img/s", "SAM rho", "Epochs", "Test top-1 % (SAM gain)"],
                           rows, caption="Fashion-MNIST test accuracy"))
    section.add(html.figure(training_curves(runs), "Training loss (left) and test accuracy (right) per epoch; "
                                                   "dashed lines are the SAM runs."))
    return section


def training_curves(runs: list[DemoRun]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"vit": "tab:blue", "mixer": "tab:orange", "resnet": "tab:green"}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        style = dict(color=colors[run.family], linestyle="--" if run.sam else "-", label=run.label)
        train_log = read_metrics(run.run_dir, "train")
        ax_loss.plot([r["epoch"] for r in train_log], [r["loss"] for r in train_log], **style)
        evals = read_metrics(run.run_dir, "eval")
        ax_acc.plot([r["epoch"] for r in evals], [100 * r["test_accuracy"] for r in evals], marker="o", **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stages

Stage = Callable[[list[DemoRun]], html.Section]


def labelled(runs: list[DemoRun]) -> list[tuple[str, Path]]:
    return [(run.label, run.run_dir) for run in runs]


def robustness_stage(runs: list[DemoRun]) -> html.Section:
    """Corrupted (19 corruptions x 5 severities) and PGD accuracy on a test subset."""
    from vitsam.evaluators.protocol import evaluate_run
    from vitsam.robustness.report import robustness_section

    for run in runs:
        evaluate_run(run.run_dir, ["corruptions", "attack"], device=str(run_device(run)),
                     log=lambda text: print(f"[demo] {text}"))
    return robustness_section(labelled(runs))


def geometry_stage(runs: list[DemoRun]) -> html.Section:
    """Hessian, NTK, landscapes, sparsity and attention (the paper's Table 1 and figures)."""
    from vitsam.analysis.report import geometry_section

    return geometry_section(labelled(runs), device=str(run_device(runs[0])),
                            log=lambda text: print(f"[demo] {text}"))


def run_device(run: DemoRun) -> torch.device:
    from vitsam.train.distributed import pick_device

    return pick_device(run.config.train.device)


def stages() -> list[Stage]:
    """The report's sections in order; each computes what it needs (resumably), then draws."""
    return [training_section, geometry_stage, robustness_stage]


def run_demo(preset: str = "quick", out: str | Path = "runs/demo", data_dir: str | None = None,
             only: str | None = None, device: str = "auto") -> Path:
    out = Path(out)
    start = time.perf_counter()
    runs = plan(preset, out, data_dir, device, only)
    train_runs(runs)
    sections = [stage(runs) for stage in stages()]
    meta = (f"preset {preset}; {platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}); wall time {time.perf_counter() - start:.0f}s for this invocation")
    report = html.write(out / "report.html", "vitsam demo: ViT, Mixer and ResNet with and without SAM "
                                             "on Fashion-MNIST", sections, meta)
    return report
