"""The report's geometry section: the paper's Table 1 and per-block table, landscapes,
sparsity and attention maps, vanilla against SAM, for a list of run directories.

Runs are paired by model name; a run is "SAM" when its config has ``sam.rho > 0``.
Everything is drawn from the analyzers' JSON results (computed here when missing), so
rebuilding a report costs nothing once the runs are analyzed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vitsam import config as config_lib
from vitsam.analysis.attention import plot_attention
from vitsam.analysis.hessian import density_curve, first_middle_last
from vitsam.analysis.runner import analyze_run, interpolation_between
from vitsam.report import html
from vitsam.train.checkpoint import atomic_write_json


@dataclass
class AnalyzedRun:
    label: str
    run_dir: Path
    model_name: str
    sam: bool
    results: dict
    accuracy: float | None
    num_params: int | None = None


@dataclass
class Family:
    """The runs of one model: vanilla and SAM (either may be missing)."""
    model_name: str
    runs: dict[str, AnalyzedRun] = field(default_factory=dict)  # "vanilla" / "sam" -> run

    def ordered(self) -> list[AnalyzedRun]:
        return [self.runs[k] for k in ("vanilla", "sam") if k in self.runs]


def load_analyzed(label: str, run_dir: Path, device: str, log) -> AnalyzedRun:
    cfg = config_lib.load(run_dir / "config.json")
    results = analyze_run(run_dir, device=device, log=log)
    summary_path = run_dir / "eval.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    hessian = results.get("hessian", {})
    return AnalyzedRun(label, run_dir, cfg.model.name, cfg.sam.rho > 0, results,
                       summary.get("test_accuracy"), hessian.get("num_parameters"))


def families_of(runs: Sequence[AnalyzedRun]) -> list[Family]:
    families: dict[str, Family] = {}
    for run in runs:
        families.setdefault(run.model_name, Family(run.model_name)).runs["sam" if run.sam else "vanilla"] = run
    return list(families.values())


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _arrow(family: Family, value_of: Callable[[AnalyzedRun], object]) -> str:
    """"vanilla -> SAM" as in the paper's Table 1 (one value when both are the same)."""
    values = [_number(value_of(run)) for run in family.ordered()]
    return values[0] if len(set(values)) == 1 else " \u2192 ".join(values)


def _ntk_kappa(run: AnalyzedRun, kernel: str):
    entry = run.results.get("ntk", {}).get(kernel, {})
    if not entry:
        return None
    return entry["kappa"] if entry["kappa"] is not None else math.inf


def table1(families: list[Family]) -> str:
    def accuracy(run):
        return None if run.accuracy is None else round(100 * run.accuracy, 2)

    rows = [
        ("#params", lambda r: r.num_params),
        ("NTK \u03ba (sum of logits)", lambda r: _ntk_kappa(r, "sum")),
        ("NTK \u03ba (all logits)", lambda r: _ntk_kappa(r, "full")),
        ("Hessian \u03bb_max", lambda r: r.results.get("hessian", {}).get("lambda_max")),
        ("Test top-1 (%)", accuracy),
    ]
    headers = ["", *(f.model_name + (" (vanilla \u2192 SAM)" if len(f.runs) == 2 else "") for f in families)]
    return html.table(headers, [[name, *(_arrow(f, fn) for f in families)] for name, fn in rows],
                      caption="Geometry, shaped like the paper's Table 1 (vanilla \u2192 SAM)")


BLOCK_COLUMNS = [("embedding", "Embedding"), (("attention", "token_mixing"), "MSA / Token MLP"),
                 (("mlp", "channel_mixing"), "MLP / Channel MLP")]


def block_table(runs: Sequence[AnalyzedRun]) -> str:
    headers = ["Model", *(title for _, title in BLOCK_COLUMNS), "First block", "Middle block",
               "Last block", "Whole", "\u2016w\u2016\u2082", "\u2016a_first\u2016\u2082",
               "\u2016a_mid\u2016\u2082", "\u2016a_last\u2016\u2082"]
    rows = []
    for run in runs:
        table = run.results.get("hessian", {}).get("blocks")
        if not table:
            continue
        lambdas, norms = table["lambda_max"], table["activation_norm"]
        first, mid, last = first_middle_last(table["num_blocks"])
        row = [run.label]
        for keys, _ in BLOCK_COLUMNS:
            keys = (keys,) if isinstance(keys, str) else keys
            row.append(_number(next((lambdas[k] for k in keys if k in lambdas), None)))
        row += [_number(lambdas.get(f"block{k}")) for k in (first, mid, last)]
        row += [_number(lambdas["whole"]), _number(table["weight_norm"])]
        row += [_number(norms.get(f"a{k}")) for k in (first, mid, last)]
        rows.append(row)
    return html.table(headers, rows, caption="\u03bb_max of the diagonal Hessian blocks and norms "
                                             "(the paper's per-block table)")


# --------------------------------------------------------------------------- figures

def _panels(families: list[Family], draw: Callable, title: str, width: float = 3.8):
    """One subplot per family; ``draw(ax, family)``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(width * len(families), 3.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        draw(ax, family)
        ax.set_title(family.model_name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def landscape_curves(families: list[Family]):
    def draw(ax, family):
        for run in family.ordered():
            data = run.results.get("landscape", {})
            if "alphas" in data:
                ax.plot(data["alphas"], data["loss_1d"], label=run.label)
        ax.set_xlabel("alpha")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    return _panels(families, draw, "1-D loss landscape along a filter-normalized direction")


def landscape_contours(runs: Sequence[AnalyzedRun]):
    import matplotlib.pyplot as plt

    runs = [r for r in runs if "loss_2d" in r.results.get("landscape", {})]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(3.0 * max(1, len(runs)), 2.9), squeeze=False)
    for ax, run in zip(axes[0], runs):
        data = run.results["landscape"]
        axis, losses = data["axis_2d"], np.asarray(data["loss_2d"])
        filled = ax.contourf(axis, axis, losses, levels=15, cmap="viridis")
        fig.colorbar(filled, ax=ax, fraction=0.046)
        ax.set_title(run.label, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def interpolation_figure(curves: dict[str, dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    for name, data in curves.items():
        ax.plot(data["t"], data["loss"], label=name)
    ax.axvline(0, color="gray", lw=0.5)
    ax.axvline(1, color="gray", lw=0.5)
    ax.set_xlabel("t  (0 = vanilla weights, 1 = SAM weights)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return fig


def perturbed_figure(families: list[Family]):
    def draw(ax, family):
        for run in family.ordered():
            rows = run.results.get("perturbed", {}).get("perturbed", [])
            if rows:
                ax.plot([r["sigma"] for r in rows], [r["loss"] for r in rows], marker="o", label=run.label)
        ax.set_xlabel("sigma")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    return _panels(families, draw, "Training loss at w + N(0, sigma^2)")


def density_figure(families: list[Family]):
    """SLQ densities of a family on one grid with one broadening width, so that the
    vanilla and SAM curves are comparable."""
    def draw(ax, family):
        densities = {run.label: run.results.get("hessian", {}).get("density") for run in family.ordered()}
        densities = {label: (np.asarray(d["nodes"]), np.asarray(d["weights"]))
                     for label, d in densities.items() if d}
        if not densities:
            return
        lo = min(float(nodes.min()) for nodes, _ in densities.values())
        hi = max(float(nodes.max()) for nodes, _ in densities.values())
        span = max(hi - lo, 1e-12)
        grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 800)
        for label, (nodes, weights) in densities.items():
            ax.semilogy(grid, density_curve(nodes, weights, grid, 0.01 * span) + 1e-12, label=label)
        ax.set_xlabel("eigenvalue")
        ax.legend(fontsize=7)
    return _panels(families, draw, "Hessian spectral density (stochastic Lanczos quadrature)")


def sparsity_figure(families: list[Family]):
    def draw(ax, family):
        for run, style in zip(family.ordered(), ("-", "--")):
            for kind, values in run.results.get("sparsity", {}).get("per_block", {}).items():
                ax.plot(range(1, len(values) + 1), [100 * v for v in values], style, marker="o",
                        label=f"{run.label} {kind}")
        ax.set_xlabel("block")
        ax.set_ylabel("activated neurons (%)")
        ax.legend(fontsize=6)
    with_mlps = [f for f in families if any("per_block" in r.results.get("sparsity", {}) for r in f.ordered())]
    return _panels(with_mlps, draw, "Share of MLP hidden units with positive activation") if with_mlps else None


def attention_figure(families: list[Family]):
    for family in families:
        entries = {r.label: r.results.get("attention", {}) for r in family.ordered()}
        entries = {label: e for label, e in entries.items() if "mean" in e}
        if entries:
            images = np.asarray(next(iter(entries.values()))["images"])
            maps = {label: {k: np.asarray(e[k]) for k in ("mean", "rollout")} for label, e in entries.items()}
            return plot_attention(images, maps)
    return None


# --------------------------------------------------------------------------- the section

def interpolations(families: list[Family], device: str) -> dict[str, dict]:
    """Vanilla -> SAM interpolation per family, cached in the SAM run's analysis folder."""
    curves = {}
    for family in families:
        if len(family.runs) < 2:
            continue
        vanilla, sam = family.runs["vanilla"], family.runs["sam"]
        path = sam.run_dir / "analysis" / "interpolation.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        if cached.get("from") != str(vanilla.run_dir):
            cached = {"from": str(vanilla.run_dir), **interpolation_between(vanilla.run_dir, sam.run_dir,
                                                                             device=device)}
            atomic_write_json(cached, path)
        curves[family.model_name] = cached
    return curves


def geometry_section(runs: Sequence[tuple[str, Path]], device: str = "auto", log=print) -> html.Section:
    """The demo report's geometry section for (label, run directory) pairs; runs are
    analyzed first where their results are missing."""
    analyzed = [load_analyzed(label, Path(run_dir), device, log) for label, run_dir in runs]
    families = families_of(analyzed)
    section = html.Section("Loss geometry (the paper's Table 1, per-block table and figures)")
    section.add(html.paragraph(
        "Measured on a fixed seeded subset of un-augmented training images with the models in eval mode. "
        "Hessian: Lanczos with full reorthogonalization on the training cross-entropy (relative residual "
        "tolerance in hessian.json), trace by Hutchinson; per-block columns restrict the Hessian to a "
        "parameter group. NTK \u03ba = \u03bb_max / \u03bb_min of the empirical kernel in float64, averaged "
        "over disjoint blocks of images as in the paper's Appendix E; inf marks a numerically singular "
        "kernel. Norms: \u2016w\u2016\u2082 over all parameters, \u2016a_k\u2016\u2082 the per-image norm of "
        "block k's output, averaged."))
    section.add(table1(families))
    section.add(block_table(analyzed))
    section.add(html.figure(landscape_curves(families), "Training loss along one filter-normalized random "
                                                         "direction (Li et al. 2018), vanilla vs SAM."))
    section.add(html.figure(landscape_contours(analyzed), "2-D loss landscapes around each model's weights."))
    curves = interpolations(families, device)
    if curves:
        section.add(html.figure(interpolation_figure(curves), "Linear interpolation from the vanilla to the "
                                                             "SAM weights of each model."))
    section.add(html.figure(perturbed_figure(families), "Gaussian-perturbed training loss (mean over draws)."))
    section.add(html.figure(density_figure(families), "Hessian eigenvalue density, vanilla vs SAM."))
    for fig, caption in ((sparsity_figure(families), "Activation sparsity per block: the paper finds fewer "
                                                     "active neurons after SAM, mostly in the first blocks."),
                         (attention_figure(families), "Class-token attention of the last block (head mean) "
                                                      "and attention rollout over the input, vanilla vs SAM.")):
        if fig is not None:
            section.add(html.figure(fig, caption))
    return section
