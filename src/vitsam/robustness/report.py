"""The robustness section of the HTML report: corrupted and adversarial accuracy of
runs side by side, vanilla against SAM (the paper's Table 2 ImageNet-C column and
its PGD study, at the scale of the runs given)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitsam.report.html import Section, figure, paragraph, table
from vitsam.robustness.runner import read_result


def _config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _is_sam(run_dir: Path) -> bool:
    return _config(run_dir).get("sam", {}).get("rho", 0) > 0


def _pairs(runs):
    """(model name, vanilla label, SAM label) for runs of the same model and data that
    differ in SAM."""
    by_key: dict = {}
    for label, run_dir in runs:
        cfg = _config(run_dir)
        key = (cfg.get("model", {}).get("name", label), cfg.get("data", {}).get("dataset", ""))
        by_key.setdefault(key, {})["sam" if _is_sam(run_dir) else "vanilla"] = label
    return [(key[0], d["vanilla"], d["sam"]) for key, d in by_key.items() if {"vanilla", "sam"} <= d.keys()]


def _delta(value):
    if value is None:
        return "-"
    return (f"{value:+.4f}", "good" if value > 0 else "bad" if value < 0 else "")


def robustness_section(runs: list[tuple[str, Path]]) -> Section:
    """Section for runs given as (label, run directory), from their saved results."""
    section = Section("Robustness: corruptions and adversarial attacks")
    results = {label: (read_result(d, "corruptions"), read_result(d, "pgd_linf")) for label, d in runs}
    present = [(label, d) for label, d in runs if any(results[label])]
    if not present:
        return section.add(paragraph("No robustness results yet: run `vitsam robust RUN_DIR` on the runs."))
    eps = sorted({e for _, pgd in results.values() if pgd for e in pgd["accuracy"]}, key=float)
    headers = ["run", "clean", "mean corrupted", *[f"PGD eps {_eps_text(e)}" for e in eps]]
    rows = []
    for label, _ in present:
        corr, pgd = results[label]
        clean = (corr or pgd or {}).get("clean_accuracy")
        rows.append([label, _num(clean), _num(corr and corr["mean_accuracy"]),
                     *[_num(pgd and pgd["accuracy"].get(e)) for e in eps]])
    section.add(paragraph(
        "Mean corrupted accuracy is the mean over all corruptions and severities (the paper's ImageNet-C "
        "column, Table 2); PGD is PGD-10 with a random start in an L-inf ball, eps in [0, 1] pixel units."))
    section.add(table(headers, rows, caption="Accuracy of each run"))
    pairs = _pairs(present)
    if pairs:
        delta_rows = []
        for model, vanilla, sam in pairs:
            (cv, pv), (cs, ps) = results[vanilla], results[sam]
            delta_rows.append([model, _delta(_diff(cs, cv, "mean_accuracy")),
                               *[_delta(_diff(ps and ps["accuracy"], pv and pv["accuracy"], e)) for e in eps]])
        section.add(table(["model", "mean corrupted", *[f"PGD eps {_eps_text(e)}" for e in eps]], delta_rows,
                          caption="SAM minus vanilla (green: SAM more robust)"))
    with_corruptions = [(label, results[label][0]) for label, _ in present if results[label][0]]
    if with_corruptions:
        section.add(figure(_heatmaps(with_corruptions), "Corrupted accuracy per corruption (rows) and severity "
                                                        "(columns), one panel per run"))
    with_pgd = [(label, results[label][1], d) for label, d in present if results[label][1]]
    if with_pgd:
        section.add(figure(_pgd_plot(with_pgd), "Accuracy under PGD-10 as the radius grows "
                                                "(solid: SAM, dashed: vanilla)"))
    return section


def _num(value):
    return "-" if value is None else float(value)


def _diff(a, b, key):
    if not a or not b or a.get(key) is None or b.get(key) is None:
        return None
    return a[key] - b[key]


def _eps_text(key: str) -> str:
    value = float(key) * 255
    return f"{value:.3g}/255"


def _heatmaps(items):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(items[0][1]["accuracy"])
    severities = list(items[0][1]["per_severity"])
    cols = min(3, len(items))
    rows = int(np.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 0.28 * len(names) * rows + 1.2),
                             squeeze=False, constrained_layout=True)
    image = None
    for ax, (label, result) in zip(axes.flat, items):
        grid = np.array([[result["accuracy"].get(n, {}).get(s, np.nan) for s in severities] for n in names])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{label}\nmean {result['mean_accuracy']:.3f}", fontsize=9)
        ax.set_xticks(range(len(severities)), severities, fontsize=7)
        ax.set_yticks(range(len(names)), names if ax in axes[:, 0] else [], fontsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy")
    return fig


def _pgd_plot(items):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, result, run_dir in items:
        points = sorted((float(e), a) for e, a in result["accuracy"].items())
        eps = [0.0] + [e for e, _ in points]
        acc = [result["clean_accuracy"]] + [a for _, a in points]
        ax.plot(np.array(eps) * 255, acc, marker="o", linestyle="-" if _is_sam(run_dir) else "--", label=label)
    ax.set_xlabel("eps (x 1/255)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
