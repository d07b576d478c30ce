"""The report's geometry section: the paper's Table 1 and per-block table, landscapes,
sparsity and attention maps, vanilla against SAM, with the paper's figures beside ours.

Everything is read from the runs' evaluator results (``vitsam.evaluators``: the
``hessian`` result on training images and, when measured, on held-out images, ``ntk``,
``landscape``, ...); the report's evaluation stage (``GEOMETRY_REQUESTS``) computes the
missing ones first, so rebuilding a report costs nothing once the runs are measured.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vitsam import config as config_lib
from vitsam import paper
from vitsam.analysis.attention import plot_attention
from vitsam.analysis.curvature import density_curve
from vitsam.analysis.hessian import first_middle_last
from vitsam.errors import VitsamError
from vitsam.evaluators.protocol import RESULTS, find_result
from vitsam.jsonfile import write_json
from vitsam.report import html

# What the report's evaluation stage measures for this section (evaluator, option
# overrides): the paper's measures on training images, lambda_max also on held-out
# images (a memorised training set has a vanishing training-loss Hessian;
# docs/calibration.md). ``ggn`` and ``sharpness`` are shown when a run has them.
LAMBDA_MAX = {"density_steps": 0, "density_vectors": 1, "trace_samples": 0, "blocks": False}  # lambda_max alone
GEOMETRY_REQUESTS = (("hessian", None), ("hessian", {**LAMBDA_MAX, "split": "val"}),
                     ("ntk", None), ("landscape", None), ("perturbed", None), ("sparsity", None),
                     ("attention", None))
# what the claims read of the other seeds' runs (``vitsam.report.build.evidence``)
CLAIMS_REQUESTS = (("hessian", LAMBDA_MAX), ("hessian", {**LAMBDA_MAX, "split": "val"}), ("sparsity", None))
SHOWN = ("hessian", "ggn", "ntk", "landscape", "perturbed", "sharpness", "sparsity", "attention")
HELDOUT = "hessian_heldout"  # results key of the Hessian on held-out images


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


def load_analyzed(label: str, run_dir: str | Path) -> AnalyzedRun:
    """A run's newest geometry results (training images; ``HELDOUT``: the Hessian on
    held-out images), its test accuracy and size."""
    run_dir = Path(run_dir)
    cfg = config_lib.load(run_dir / "config.json")
    results = {name: found for name in SHOWN if (found := find_result(run_dir, name, split="train"))}
    if heldout := find_result(run_dir, "hessian", split="val"):
        results[HELDOUT] = heldout
    summary_path = run_dir / "eval.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return AnalyzedRun(label, run_dir, cfg.model.name, cfg.sam.rho > 0, results, summary.get("test_accuracy"),
                       summary.get("parameters") or results.get("hessian", {}).get("num_parameters"))


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


def _plus_minus(value, error) -> str:
    text = _number(value)
    return text if error is None or value is None else f"{text} \u00b1 {error:.2g}"


def hessian_cell(run: AnalyzedRun, key: str = "hessian") -> str | None:
    """lambda_max on the whole analysis set \u00b1 the batch-means standard error from its
    disjoint subsets; * when Lanczos did not reach its tolerance."""
    record = run.results.get(key, {})
    if record.get("lambda_max") is None:
        return None
    error = record.get("spread", {}).get("lambda_max", {}).get("stderr")
    return _plus_minus(record["lambda_max"], error) + ("" if record.get("converged", True) else "*")


def lambda_min_cell(run: AnalyzedRun) -> str | None:
    record = run.results.get("hessian", {})
    if record.get("lambda_min") is None:
        return None
    return _number(record["lambda_min"]) + ("" if record.get("lambda_min_converged", True) else "*")


def ntk_cell(run: AnalyzedRun, kernel: str) -> str | None:
    """kappa averaged over the kernel blocks \u00b1 its standard error ("inf" when a block's
    kernel is singular, "skipped" when the kernel did not fit in memory)."""
    entry = run.results.get("ntk", {}).get(kernel)
    if not entry:
        return None
    if "skipped" in entry:
        return "skipped"
    if entry.get("kappa") is None:
        return "inf"
    return _plus_minus(entry["kappa"], entry.get("kappa_stderr"))


def _ntk_setting(families: list[Family]) -> str:
    for family in families:
        for run in family.ordered():
            record = run.results.get("ntk", {})
            if "blocks" in record:
                return f"{record['blocks']} blocks of {record['block_size']} images"
    return "blocks of images"


def _hessian_setting(families: list[Family], key: str = "hessian") -> str:
    for family in families:
        for run in family.ordered():
            record = run.results.get(key, {})
            if "num_examples" in record:
                spread = record.get("spread", {})
                parts = f", \u00b1 s.e. from {spread['subsets']} disjoint subsets of {spread['subset_size']}" \
                    if spread else ""
                return f"on {record['num_examples']} images{parts}"
    return ""


NTK_ROWS = (("trace", "NTK \u03ba, trace kernel \u03a3\u2096 J\u2096J\u2096\u1d40"),
            ("full", "NTK \u03ba, full kernel (nK \u00d7 nK)"),
            ("sum", "NTK \u03ba, summed-logit kernel (\u03a3\u2096J\u2096)(\u03a3\u2096J\u2096)\u1d40"))

# Table 1's rows in the paper: our row -> the paper's column (``vitsam.paper``, table1)
PAPER_TABLE1 = {"#params": "params_m", "NTK": "ntk_kappa", "Hessian \u03bb_max (training images)": "lambda_max",
                "Test top-1 (%)": "imagenet"}


def paper_cell(family_name: str, row: str, ntk_row: str = "") -> str:
    """The paper's Table 1 figure for the family's representative (ViT-B/16, Mixer-B/16,
    ResNet-152), "vanilla -> SAM" where the paper prints both; its NTK kappa (of J J^T
    over all outputs: the full kernel) only on the NTK row ``ntk_row``."""
    if row.startswith("NTK") and row != ntk_row:
        return ""
    column = next((c for prefix, c in PAPER_TABLE1.items() if row.startswith(prefix)), None)
    model = paper.REPRESENTATIVES.get(family_name)
    if column is None or model is None:
        return ""
    found = {f.variant: f.value for f in paper.figures("table1", model, column)}
    if not found:
        return ""
    values = [f"{found[v]:g}" for v in ("vanilla", "sam") if v in found]
    text = values[0] if len(set(values)) == 1 else " \u2192 ".join(values)
    return text + ("M" if column == "params_m" else "")


def table1(families: list[Family]) -> str:
    """Ours, vanilla -> SAM, per model, each beside the paper's figure for the same family."""
    def accuracy(run):
        return None if run.accuracy is None else round(100 * run.accuracy, 2)

    ntk = _ntk_setting(families)
    rows = [("#params", lambda r: r.num_params)]
    kernels = [(kernel, label) for kernel, label in NTK_ROWS
               if any(ntk_cell(r, kernel) is not None for f in families for r in f.ordered())]
    rows += [(label, lambda r, kernel=kernel: ntk_cell(r, kernel)) for kernel, label in kernels]
    labels = dict(kernels)
    ntk_row = labels.get("full") or next(iter(labels.values()), "")   # where the paper's kappa goes
    rows += [("Hessian \u03bb_max (training images)", hessian_cell)]
    if any(HELDOUT in r.results for f in families for r in f.ordered()):
        rows.append(("Hessian \u03bb_max (held-out images)", lambda r: hessian_cell(r, HELDOUT)))
    rows += [("Hessian \u03bb_min", lambda_min_cell), ("Test top-1 (%)", accuracy)]
    headers = [""]
    for f in families:
        headers += [f.model_name + (" (vanilla \u2192 SAM)" if len(f.runs) == 2 else ""),
                    "paper: " + paper.paper_name(paper.REPRESENTATIVES[_family(f)]) if _family(f) else "paper"]
    body = [[name, *(cell for f in families for cell in (_arrow(f, fn), paper_cell(_family(f), name, ntk_row)))]
            for name, fn in rows]
    heldout = _hessian_setting(families, HELDOUT)
    caption = (f"Geometry, shaped like the paper's Table 1 (vanilla \u2192 SAM), each model beside the paper's "
               f"figure for its family (ImageNet, 224 px; the paper gives one NTK \u03ba per architecture, for the "
               f"vanilla model, of J J\u1d40 over all outputs: our full kernel, shown on the trace kernel's row "
               f"when the full one was not measured). NTK \u03ba: mean over {ntk} \u00b1 its standard error; Hessian on training images "
               f"{_hessian_setting(families)}" + (f"; on held-out images {heldout}" if heldout else "")
               + "; * Lanczos above its tolerance. The paper's test top-1 is ImageNet's.")
    return html.table(headers, body, caption=caption)


def _family(family: Family) -> str | None:
    try:
        return paper.family_of(family.model_name)
    except VitsamError:
        return None


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
        converged = table.get("converged", {})

        def value(key):
            if key not in lambdas:
                return "-"
            return _number(lambdas[key]) + ("" if converged.get(key, True) else "*")

        first, mid, last = first_middle_last(table["num_blocks"])
        row = [run.label]
        for keys, _ in BLOCK_COLUMNS:
            keys = (keys,) if isinstance(keys, str) else keys
            row.append(next((value(k) for k in keys if k in lambdas), "-"))
        row += [value(f"block{k}") for k in (first, mid, last)]
        row += [_number(lambdas["whole"]), _number(table["weight_norm"])]
        row += [_number(norms.get(f"a{k}")) for k in (first, mid, last)]
        rows.append(row)
    rows += paper_block_rows(runs)
    return html.table(headers, rows, caption="\u03bb_max of the diagonal Hessian blocks and norms (the paper's "
                                             "per-block table), on training images; MSA / MLP hold the attention "
                                             "and MLP weights of all blocks, LayerNorms count in their block; "
                                             "\u2016a_k\u2016\u2082: the output of block k per image; * Lanczos above "
                                             "its tolerance. Rows \"paper\": the paper's 12-block ImageNet models "
                                             "(blocks 1, 6, 12), for the shape, not the scale")


# the paper's per-block columns (``vitsam.paper``, hessian_blocks) in this table's order
PAPER_BLOCK_COLUMNS = ("embedding", "mixing", "mlp", "block1", "block6", "block12", "whole", "weight_norm",
                       "a1", "a6", "a12")


def paper_block_rows(runs: Sequence[AnalyzedRun]) -> list[list[str]]:
    """The paper's rows for the families among ``runs`` that it tabulates (ViT, Mixer)."""
    rows = []
    families = {paper.family_of(r.model_name) for r in runs if r.model_name.startswith(("vit", "mixer"))}
    for family in sorted(families):
        model = paper.REPRESENTATIVES[family]
        names = {"mixing": "attention" if family == "vit" else "token_mixing",
                 "mlp": "mlp" if family == "vit" else "channel_mixing"}
        for variant in ("vanilla", "sam"):
            values = {f.column: f.value for f in paper.figures("hessian_blocks", model, variant=variant)}
            label = f"paper: {paper.paper_name(model)}" + ("-SAM" if variant == "sam" else "")
            rows.append([label, *(f"{values[names.get(c, c)]:g}" for c in PAPER_BLOCK_COLUMNS)])
    return rows


def _measured(runs: Sequence[AnalyzedRun], name: str) -> bool:
    return any(name in r.results for r in runs)


def curvature_table(families: list[Family]) -> str:
    """Sharpness measures and the Gauss-Newton lambda_max, vanilla -> SAM, where measured."""
    def sharpness(key):
        return lambda r: (r.results.get("sharpness", {}).get(key) or {}).get("sharpness")

    rows = [("worst-case sharpness (L2 ball)", sharpness("worst_case")),
            ("adaptive sharpness", sharpness("adaptive")), ("m-sharpness", sharpness("m_sharpness")),
            ("GGN \u03bb_max", lambda r: r.results.get("ggn", {}).get("lambda_max")),
            ("GGN trace", lambda r: r.results.get("ggn", {}).get("trace"))]
    rows = [(name, fn) for name, fn in rows if any(fn(r) is not None for f in families for r in f.ordered())]
    options = next((r.results["sharpness"]["options"] for f in families for r in f.ordered()
                    if "sharpness" in r.results), None)
    radius = f" (rho {options['rho']}, adaptive rho {options['adaptive_rho']}, m {options['m']}, " \
             f"{options['steps']} ascent steps)" if options else ""
    return html.table(["", *(f.model_name + " (vanilla \u2192 SAM)" for f in families)],
                      [[name, *(_arrow(f, fn) for f in families)] for name, fn in rows],
                      caption=f"Sharpness L(w + \u03b5) \u2212 L(w) at the worst \u03b5 found{radius} and the "
                              "Gauss-Newton matrix's largest eigenvalue, on training images.")


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
        filled = ax.contourf(axis, data.get("axis_2d_beta", axis), losses, levels=15, cmap="viridis")
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


def _sigma_scale(families: list[Family]) -> str:
    scales = {r.results.get("perturbed", {}).get("sigma_scale", "absolute") for f in families for r in f.ordered()
              if r.results.get("perturbed")}
    return scales.pop() if len(scales) == 1 else "mixed"


def perturbed_figure(families: list[Family]):
    def draw(ax, family):
        for run in family.ordered():
            rows = run.results.get("perturbed", {}).get("perturbed", [])
            if rows:
                ax.errorbar([r["sigma"] for r in rows], [r["loss"] for r in rows],  # null (non-finite) -> nan
                            yerr=[np.nan if r["loss_std"] is None else r["loss_std"] for r in rows],
                            marker="o", capsize=2, label=run.label)
        ax.set_xlabel("sigma (relative to each filter's RMS)" if _sigma_scale(families) == "filter" else "sigma")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    return _panels(families, draw, "Training loss at w + Gaussian noise")


def perturbed_caption(families: list[Family]) -> str:
    scale = _sigma_scale(families)
    how = ("noise on each weight filter with standard deviation sigma times the filter's RMS, biases and norm "
           "parameters unperturbed (Li et al. 2018's normalization, invariant to rescaling a filter)"
           if scale == "filter" else "N(0, sigma\u00b2) on every parameter" if scale == "absolute"
           else "runs use different noise scales: not comparable")
    return f"Gaussian-perturbed training loss, mean \u00b1 s.d. over draws: {how}."


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
    from matplotlib.ticker import MaxNLocator

    def draw(ax, family):
        for run, style in zip(family.ordered(), ("-", "--")):
            for kind, values in run.results.get("sparsity", {}).get("per_block", {}).items():
                ax.plot(range(1, len(values) + 1), [100 * v for v in values], style, marker="o",
                        label=f"{run.label} {kind}")
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("activated neurons (%)")
        ax.legend(fontsize=6)
    with_mlps = [f for f in families if any("per_block" in r.results.get("sparsity", {}) for r in f.ordered())]
    return _panels(with_mlps, draw, "Share of MLP hidden units with positive activation") if with_mlps else None


def sparsity_caption(families: list[Family]) -> str:
    """What the measured shares show, family by family: the first block's share of
    active units (mean over the block's MLPs) and the mean over all blocks, vanilla
    vs SAM; then the paper's finding for comparison."""
    def shares(run):
        curves = run.results.get("sparsity", {}).get("per_block", {})
        if not curves:
            return None
        first = np.mean([values[0] for values in curves.values()])
        overall = np.mean([v for values in curves.values() for v in values])
        return 100 * first, 100 * overall

    parts = []
    for family in families:
        if len(family.runs) < 2:
            continue
        vanilla, sam = shares(family.runs["vanilla"]), shares(family.runs["sam"])
        if vanilla is None or sam is None:
            continue
        verdict = ("fewer" if sam[0] < vanilla[0] else "more" if sam[0] > vanilla[0] else "as many")
        parts.append(f"{family.model_name}: block 1 has {vanilla[0]:.1f}% active units after vanilla training and "
                     f"{sam[0]:.1f}% after SAM ({verdict} with SAM); over all blocks {vanilla[1]:.1f}% vs "
                     f"{sam[1]:.1f}%")
    measured = "; ".join(parts) + "." if parts else "No vanilla/SAM pair to compare."
    return (f"Share of MLP hidden units with a positive (post-GELU) activation per block. {measured} The paper "
            "reports fewer active neurons after SAM in the first layers of MLP-Mixer.")


def density_caption(families: list[Family]) -> str:
    settings = {(d["vectors"], d["steps"]) for f in families for r in f.ordered()
                if (d := r.results.get("hessian", {}).get("density")) and "steps" in d}
    how = ", ".join(f"{v} probe vectors x {m} Lanczos steps" for v, m in sorted(settings)) or "settings not recorded"
    return f"Hessian eigenvalue density by stochastic Lanczos quadrature ({how}), vanilla vs SAM."


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

def interpolation_path(vanilla_dir: Path, sam_dir: Path) -> Path:
    return Path(sam_dir) / RESULTS / "interpolation" / f"from_{Path(vanilla_dir).name}.json"


def measure_interpolation(vanilla_dir: str | Path, sam_dir: str | Path, points: int = 11, examples: int = 256,
                          batch_size: int = 128, device: str = "auto", log: Callable[[str], None] = print) -> dict:
    """Training loss and error along (1 - t) w_vanilla + t w_sam, t in [0, 1], on the
    vanilla run's un-augmented training images; saved in the SAM run's results and
    reused while both runs' weights are unchanged. No extrapolation: BatchNorm running
    variances would turn negative outside [0, 1]."""
    import torch

    from vitsam.analysis.landscape import interpolate
    from vitsam.evaluators.protocol import RunData, weights_hash
    from vitsam.train.checkpoint import load_run
    from vitsam.train.distributed import pick_device

    a, b = load_run(vanilla_dir), load_run(sam_dir)
    if a.model.state_dict().keys() != b.model.state_dict().keys():
        raise VitsamError(f"cannot interpolate between {str(vanilla_dir)!r} and {str(sam_dir)!r}: "
                          "their models have different architectures")
    weights = [weights_hash(a.model), weights_hash(b.model)]
    path = interpolation_path(Path(vanilla_dir), Path(sam_dir))
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("weights") == weights and cached.get("points") == points and cached.get("examples") == examples:
        return cached
    log(f"[evaluate] interpolation {vanilla_dir} -> {sam_dir} ...")
    device = pick_device(device)
    model = a.model.to(device)
    batches = RunData(a.config, device, batch_size).batches("train", examples)
    ts = torch.linspace(0.0, 1.0, points).tolist()
    losses, errors = interpolate(model, model.state_dict(), b.model.to(device).state_dict(), batches, ts)
    record = {"from": str(vanilla_dir), "to": str(sam_dir), "weights": weights, "points": points,
              "examples": examples, "t": ts, "loss": losses, "error": errors}
    write_json(record, path)
    return record


def interpolations(families: list[Family]) -> dict[str, dict]:
    """The saved vanilla -> SAM interpolation of each family (``measure_interpolation``),
    unless it was measured on other weights than the runs' newest results."""
    curves = {}
    for family in families:
        if len(family.runs) == 2:
            vanilla, sam = family.runs["vanilla"], family.runs["sam"]
            path = interpolation_path(vanilla.run_dir, sam.run_dir)
            curve = json.loads(path.read_text()) if path.is_file() else None
            newest = [_weights(vanilla), _weights(sam)]
            if curve and (None in newest or curve.get("weights") == newest):
                curves[family.model_name] = curve
    return curves


def _weights(run: AnalyzedRun) -> str | None:
    """The weights hash of the run's newest results (None when it has none)."""
    return next((record["weights"] for record in run.results.values() if "weights" in record), None)


def geometry_section(groups: Sequence[Sequence[tuple[str, Path]]]) -> html.Section:
    """The report's geometry section from the runs' saved results; ``groups``: per model,
    its vanilla and SAM runs as (label, run directory), or one run alone."""
    families = []
    for group in groups:
        runs = [load_analyzed(label, run_dir) for label, run_dir in group]
        families.append(Family(runs[0].model_name, {"sam" if run.sam else "vanilla": run for run in runs}))
    analyzed = [run for family in families for run in family.ordered()]
    section = html.Section("Loss geometry (the paper's Table 1, per-block table and figures)")
    if not families:
        section.add(html.paragraph("No run to show."))
        return section
    section.add(html.paragraph(
        "Measured on a fixed class-stratified subset of un-augmented training images (and, where measured, "
        "held-out images of the run's validation split) with the models in eval mode. Hessian: "
        "Lanczos with full reorthogonalization on the training loss, each eigenvalue to an estimated relative "
        "error below the tolerance in hessian.json; \u00b1 is the batch-means standard error from disjoint "
        "subsets of the images; per-block columns restrict the Hessian to a parameter group. NTK \u03ba = "
        "\u03bb_max / \u03bb_min of the empirical kernel in float64 on disjoint blocks of images (the paper's "
        "Appendix E), averaged over blocks \u00b1 its standard error; the trace kernel \u03a3\u2096 J\u2096J\u2096\u1d40 "
        "is the headline, inf marks a numerically singular kernel. Norms: \u2016w\u2016\u2082 over all "
        "parameters, \u2016a_k\u2016\u2082 the per-image norm of block k's output, averaged."))
    section.add(table1(families))
    section.add(block_table(analyzed))
    if any("sharpness" in r.results or "ggn" in r.results for r in analyzed):
        section.add(curvature_table(families))
    if _measured(analyzed, "landscape"):
        section.add(html.figure(landscape_curves(families), "Training loss along one filter-normalized random "
                                                             "direction (Li et al. 2018), vanilla vs SAM."))
        section.add(html.figure(landscape_contours(analyzed), "2-D loss landscapes around each model's weights."))
    curves = interpolations(families)
    if curves:
        section.add(html.figure(interpolation_figure(curves), "Linear interpolation from the vanilla to the "
                                                             "SAM weights of each model."))
    if _measured(analyzed, "perturbed"):
        section.add(html.figure(perturbed_figure(families), perturbed_caption(families)))
    if any("density" in r.results.get("hessian", {}) for r in analyzed):
        section.add(html.figure(density_figure(families), density_caption(families)))
    for fig, caption in ((sparsity_figure(families), sparsity_caption(families)),
                         (attention_figure(families), "Class-token attention of the last block (head mean) "
                                                      "and attention rollout over the input, vanilla vs SAM.")):
        if fig is not None:
            section.add(html.figure(fig, caption))
    return section
