"""The robustness section of the HTML report: corrupted and adversarial accuracy of runs
side by side with 95% intervals, and SAM minus vanilla with paired intervals over the
same images.

What the paper reports: mean accuracy over ImageNet-C's 15 corruptions x 5 severities
(Table 2, ImageNet-C column). Its PGD-10 numbers come from adversarially trained models
(its adversarial-training table); the runs here are standard-trained, so the attack rows
are our own finding, labelled as such. Every caption and verdict is computed from the
numbers shown.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitsam.report.html import Section, figure, paragraph, table
from vitsam.robustness.correctness import correct_vector, corruption_scores, paired_gain, same_images
from vitsam.robustness.evaluate import comparable_with_imagenet_c

MEANS = (("imagenet_c_15", "ImageNet-C mean (15)"), ("all_19", "mean of 19"))


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


def load_results(run_dir: Path) -> dict:
    """{"corruptions": the on-the-fly result or None, "adversarial": [attack results]}
    of the run's newest weights (``vitsam.evaluators`` saved them)."""
    from vitsam.evaluators.protocol import find_result, find_results

    return {"corruptions": find_result(run_dir, "corruptions"), "adversarial": find_results(run_dir, "attack")}


def attack_name(result: dict) -> str:
    """'PGD-10 L-inf', 'APGD-100 L2 DLR targeted, 3 restarts', ... from the settings stored."""
    norm = {"linf": "L-inf", "l2": "L2"}.get(result["norm"], result["norm"])
    name = f"{result['attack'].upper()}-{result['steps']} {norm}"
    if result.get("loss", "ce") != "ce":
        name += f" {result['loss'].upper()}"
    if result.get("targeted"):
        name += " targeted"
    restarts = result.get("restarts", 1)
    return name + (f", {restarts} restarts" if restarts > 1 else "")


def eps_text(key: str, norm: str = "linf") -> str:
    value = float(key) * 255
    return f"{value:.3g}/255" if norm == "linf" else f"{float(key):.3g}"


class Column:
    """One accuracy shown per run: its label, how to read it from a run's results, and
    how to read the per-image scores behind it (for paired differences)."""

    def __init__(self, label: str, source: str, key, setting=None):
        self.label, self.source, self.key, self.setting = label, source, key, setting

    def result(self, found: dict) -> dict | None:
        if self.source == "clean":          # any result of the run holds the clean accuracy
            return found["corruptions"] or next(iter(found["adversarial"]), None)
        if self.source == "corruptions":
            return found["corruptions"]
        return next((r for r in found["adversarial"] if attack_name(r) == self.setting), None)

    def value(self, found: dict):
        """(accuracy, [low, high]) or None."""
        result = self.result(found)
        if result is None:
            return None
        if self.key == "clean":
            return result.get("clean_accuracy"), result.get("clean_interval")
        if self.source == "corruptions":
            mean = result.get("means", {}).get(self.key, {})
            return (mean.get("accuracy"), mean.get("interval")) if mean.get("accuracy") is not None else None
        if self.key not in result.get("accuracy", {}):
            return None
        return result["accuracy"][self.key], result["interval"][self.key]

    def scores(self, found: dict):
        result = self.result(found)
        if result is None:
            return None
        if self.key == "clean":
            return correct_vector(result, "clean")
        if self.source == "corruptions":
            mean = result.get("means", {}).get(self.key, {})
            return corruption_scores(result, mean["corruptions"]) if mean.get("accuracy") is not None else None
        return correct_vector(result, self.key)


def _columns(found_by_run: dict) -> list[Column]:
    columns = [Column("clean", "clean", "clean")]
    corruptions = [f["corruptions"] for f in found_by_run.values() if f["corruptions"]]
    for key, label in MEANS:
        if any(r.get("means", {}).get(key, {}).get("accuracy") is not None for r in corruptions):
            columns.append(Column(label, "corruptions", key))
    settings: dict = {}
    for found in found_by_run.values():
        for result in found["adversarial"]:
            settings.setdefault(attack_name(result), (result["norm"], set()))[1].update(result["accuracy"])
    for setting, (norm, keys) in settings.items():
        for key in sorted(keys, key=float):
            if float(key) > 0:
                columns.append(Column(f"{setting} eps {eps_text(key, norm)}", "adversarial", key, setting))
    return columns


def _percent(value, bounds) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]" if bounds else "")


def _gain_cell(estimate):
    """'+2.1 [+0.4, +3.9]' coloured only when the interval excludes zero."""
    if isinstance(estimate, str):
        return estimate
    text = f"{100 * estimate.value:+.1f}"
    if estimate.low is None:
        return text
    text += f" [{100 * estimate.low:+.1f}, {100 * estimate.high:+.1f}]"
    return (text, ("good" if estimate.value > 0 else "bad") if estimate.excludes_zero() else "")


def paired_cell(column: Column, vanilla: dict, sam: dict):
    """SAM minus vanilla on one column: an Estimate, or why there is none."""
    a, b = column.result(vanilla), column.result(sam)
    if a is None or b is None:
        return "-"
    if not same_images(a, b):
        return "not the same images"
    scores_a, scores_b = column.scores(vanilla), column.scores(sam)
    if scores_a is None or scores_b is None:
        return "no per-image data"
    return paired_gain(scores_a, scores_b)


def gain_caption(cells: list) -> str:
    """The SAM-minus-vanilla caption, counted from the intervals shown."""
    estimates = [c for c in cells if not isinstance(c, str) and c.low is not None]
    up = sum(1 for e in estimates if e.excludes_zero() and e.value > 0)
    down = sum(1 for e in estimates if e.excludes_zero() and e.value < 0)
    caption = (f"SAM minus vanilla, percentage points, paired 95% interval over the same images: SAM higher in "
               f"{up} of {len(estimates)} comparisons (green), lower in {down} (red), no detectable difference "
               f"in {len(estimates) - up - down}")
    return caption + ("." if len(estimates) == len(cells) else f"; {len(cells) - len(estimates)} cells without "
                                                                  f"a paired interval.")


def settings_text(found_by_run: dict) -> list[str]:
    """What was measured, from the results themselves (one sentence per distinct setting)."""
    sentences = []
    for result in {json.dumps(_corruption_setting(f["corruptions"])): f["corruptions"]
                   for f in found_by_run.values() if f["corruptions"]}.values():
        sentences.append(" ".join(_corruption_setting(result).values()))
    seen = set()
    for found in found_by_run.values():
        for r in found["adversarial"]:
            eps = ", ".join(eps_text(e, r["norm"]) for e in r["accuracy"] if float(e) > 0)
            units = "[0, 1] pixel units" if r["norm"] == "linf" else "L2 norm in [0, 1] pixel units"
            text = (f"{attack_name(r)} on {r['num_images']} test images: eps {eps} ({units}), "
                    f"{r['steps']} steps, step size {r['step_rule']}, {r['restarts']} restart(s) (an image counts "
                    f"as robust only if it survives every one), loss {r['loss'].upper()}, "
                    f"{'targeted' if r['targeted'] else 'untargeted'}, seed {r['seed']}.")
            if text not in seen:
                seen.add(text)
                sentences.append(text)
    return sentences


def _corruption_setting(result: dict) -> dict:
    storage = result.get("storage", "none")
    comparable = ("comparable with published ImageNet-C accuracies" if comparable_with_imagenet_c(result) else
                  "not comparable with published ImageNet-C accuracies, which are measured on the released "
                  "ImageNet-C JPEG files of 224 px images")
    return {"what": f"Corrupted copies: {result['num_images']} test images x {len(result['accuracy'])} corruptions "
                    f"x severities {', '.join(map(str, result.get('severities', [])))},",
            "how": f"made on the fly (parameter set {result['params']}, storage step {storage}, seed "
                   f"{result.get('seed')}); {comparable}."}


def robustness_section(runs: list[tuple[str, Path]], results: dict | None = None) -> Section:
    """Section for runs given as (label, run directory). ``results``: {label:
    {"corruptions": on-the-fly corruption result or None, "adversarial": [attack
    results]}} as the evaluators return them (packed correctness included, see
    ``correctness.join_arrays``); default: read from each run's robustness folder."""
    section = Section("Robustness: corruptions and adversarial attacks")
    found_by_run = results if results is not None else {label: load_results(d) for label, d in runs}
    present = [(label, d) for label, d in runs
               if found_by_run[label]["corruptions"] or found_by_run[label]["adversarial"]]
    if not present:
        return section.add(paragraph("No robustness results yet: run `vitsam robust RUN_DIR` on the runs."))
    found_by_run = {label: found_by_run[label] for label, _ in present}
    columns = _columns(found_by_run)
    for sentence in settings_text(found_by_run):
        section.add(paragraph(sentence))
    section.add(paragraph(
        "ImageNet-C mean (15) is the mean over the 15 ImageNet-C corruptions and their severities, the quantity of "
        "the paper's ImageNet-C column (Table 2); the mean of 19 adds the 4 extra corruptions. Our finding: the "
        "attack columns measure standard-trained models; the paper's PGD-10 results are for adversarially "
        "trained models (its adversarial-training table), so these columns do not test that claim."))
    rows = [[label, *[_percent(*(c.value(found_by_run[label]) or (None, None))) for c in columns]]
            for label, _ in present]
    section.add(table(["run", *[c.label for c in columns]], rows,
                      caption="Accuracy (%) of each run, 95% interval (Wilson for one accuracy; normal over "
                              "images for a mean over corrupted copies)"))
    pairs = _pairs(present)
    if pairs:
        cells = {(model, c.label): paired_cell(c, found_by_run[vanilla], found_by_run[sam])
                 for model, vanilla, sam in pairs for c in columns}
        section.add(table(["model", *[c.label for c in columns]],
                          [[model, *[_gain_cell(cells[model, c.label]) for c in columns]] for model, _, _ in pairs],
                          caption=gain_caption(list(cells.values()))))
    with_corruptions = [(label, found_by_run[label]["corruptions"]) for label, _ in present
                        if found_by_run[label]["corruptions"]]
    if with_corruptions:
        section.add(figure(_heatmaps(with_corruptions), "Corrupted accuracy per corruption (rows) and severity "
                                                        "(columns), one panel per run"))
    curves = [(label, r, d) for label, d in present for r in found_by_run[label]["adversarial"]]
    if curves:
        section.add(figure(_attack_plot(curves), "Accuracy under attack as the radius grows, with 95% intervals "
                                                 "(solid: SAM, dashed: vanilla); our finding on standard-trained "
                                                 "models"))
    return section


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
        mean = result.get("means", {}).get("imagenet_c_15", {}).get("accuracy")
        title = f"ImageNet-C mean (15) {mean:.3f}" if mean is not None else f"mean {result['mean_accuracy']:.3f}"
        ax.set_title(f"{label}\n{title}", fontsize=9)
        ax.set_xticks(range(len(severities)), severities, fontsize=7)
        ax.set_yticks(range(len(names)), names if ax in axes[:, 0] else [], fontsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy")
    return fig


def _attack_plot(items):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, result, run_dir in items:
        keys = sorted(result["accuracy"], key=float)
        eps = [0.0] + [float(k) for k in keys]
        acc = [result["clean_accuracy"]] + [result["accuracy"][k] for k in keys]
        bounds = [result["clean_interval"]] + [result["interval"][k] for k in keys]
        scale = 255 if result["norm"] == "linf" else 1
        x = np.array(eps) * scale
        line, = ax.plot(x, acc, marker="o", linestyle="-" if _is_sam(run_dir) else "--",
                        label=f"{label} ({attack_name(result)})")
        if all(bounds):
            ax.fill_between(x, [b[0] for b in bounds], [b[1] for b in bounds], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("eps (x 1/255 for L-inf)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
