"""``vitsam report RUN [RUN ...]``: the paper-shaped report for any set of runs.

    runs -> pairs (vanilla and SAM runs that differ only in SAM settings)
         -> the evaluators each section needs (run, or reused from the runs' caches)
         -> sections: claims scoreboard, regime, accuracy (Table 2), geometry (Table 1,
            the per-block table, figures), robustness -> one self-contained HTML page
            + claims.json beside it

The paper's figures stand beside ours: a run of one of the paper's configurations is
compared with that configuration's figure; a small model with its family's
representative (ViT-B/16, Mixer-B/16, ResNet-152), labelled as such.
"""
from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vitsam import claims as claims_lib
from vitsam import config as config_lib
from vitsam import paper
from vitsam.config import Config
from vitsam.errors import VitsamError, unknown_choice
from vitsam.report import html
from vitsam.stats import accuracy_interval, paired_difference
from vitsam.train.checkpoint import PREDICTIONS, load_predictions
from vitsam.train.metrics import read_metrics

FAMILY_NAMES = {"vit": "ViT", "mixer": "Mixer", "resnet": "ResNet"}
# config keys that do not make two runs different experiments
IGNORED_KEYS = ("name", "evals", "train.stop_after_steps", "train.progress", "train.device", "train.threads",
                "train.eval_batch_size", "data.data_dir", "data.num_workers")


@dataclass
class ReportRun:
    label: str
    run_dir: Path
    cfg: Config
    summary: dict                   # eval.json ({} while the run is unfinished)
    family: str                     # vit | mixer | resnet | another model family

    @property
    def sam(self) -> bool:
        return self.cfg.sam.rho > 0

    @property
    def fraction(self) -> float:
        return self.cfg.data.train_fraction

    def test_correct(self) -> np.ndarray | None:
        """Per-image correctness on the test set (predictions.npz), None when absent."""
        if not (self.run_dir / PREDICTIONS).is_file():
            return None
        arrays = load_predictions(self.run_dir)
        return arrays["test_predicted"] == arrays["test_labels"]


@dataclass
class Pair:
    vanilla: ReportRun
    sam: ReportRun

    @property
    def family(self) -> str:
        return self.vanilla.family


@dataclass
class ReportRuns:
    runs: list[ReportRun]
    pairs: list[Pair] = field(default_factory=list)
    unpaired: list[ReportRun] = field(default_factory=list)
    timings: dict = field(default_factory=dict)      # stage -> seconds, stated in the report


def family_of(cfg: Config) -> str:
    from vitsam.models import create_model

    with torch.device("meta"):
        return getattr(create_model(cfg.model.name, **cfg.model.overrides), "family", "other")


def load_report_run(run_dir: str | Path, label: str | None = None) -> ReportRun:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise VitsamError(f"{str(run_dir)!r} is not a vitsam run directory (no config.json)")
    cfg = config_lib.load(run_dir / "config.json")
    summary = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    label = label or cfg.name or run_dir.name
    return ReportRun(label, run_dir, cfg, summary, family_of(cfg))


def experiment_key(cfg: Config) -> str:
    """What makes two runs the same experiment but for SAM: the config without sam.* and
    the keys that only say how to run."""
    from vitsam.train.loop import flatten

    flat = flatten(cfg.to_dict())
    kept = {k: v for k, v in flat.items()
            if not k.startswith("sam.") and k not in IGNORED_KEYS and k.split(".")[0] not in IGNORED_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def pair_runs(runs: Sequence[ReportRun]) -> tuple[list[Pair], list[ReportRun]]:
    """Vanilla and SAM runs that differ only in SAM settings; runs left without a
    partner (or with several SAM partners: the first one by label) are listed."""
    groups: dict[str, dict[str, list[ReportRun]]] = {}
    for run in runs:
        groups.setdefault(experiment_key(run.cfg), {"vanilla": [], "sam": []})["sam" if run.sam else "vanilla"].append(run)
    pairs, unpaired = [], []
    for group in groups.values():
        vanilla, sam = group["vanilla"], sorted(group["sam"], key=lambda r: r.label)
        if vanilla and sam:
            pairs.append(Pair(vanilla[0], sam[0]))
            unpaired += vanilla[1:] + sam[1:]
        else:
            unpaired += vanilla + sam
    return pairs, unpaired


# --------------------------------------------------------------------------- text from configs

def describe_augmentation(cfg: Config) -> str:
    """The augmentation a run trained with, in words (from its config, never assumed)."""
    parts = []
    scale, ratio = tuple(cfg.data.crop_scale), tuple(cfg.data.crop_ratio)
    if scale != (1.0, 1.0):
        parts.append(f"Inception-style random resized crop (scale {scale[0]:g}-{scale[1]:g}, "
                     f"ratio {ratio[0]:.3g}-{ratio[1]:.3g})")
    if cfg.data.hflip:
        parts.append("horizontal flip")
    if cfg.augment.randaugment_layers:
        parts.append(f"RandAugment (N={cfg.augment.randaugment_layers}, M={cfg.augment.randaugment_magnitude:g})")
    if cfg.augment.mixup_alpha:
        parts.append(f"mixup (alpha {cfg.augment.mixup_alpha:g})")
    return " + ".join(parts) if parts else "none"


def describe_regime(cfg: Config, train_images: int | None = None) -> str:
    data = cfg.data
    where = data.dataset.split(":")[0].replace("_", "-")
    share = f"{data.train_fraction:.3g} of {where}" + (f" ({train_images} images)" if train_images else "")
    optim = cfg.optim
    opt = (f"{optim.name} lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {optim.schedule} schedule"
           + (f", clip {optim.grad_clip:g}" if optim.grad_clip else ""))
    sam = (f"SAM rho {cfg.sam.rho:g}" + (f" ({cfg.sam.variant}{', adaptive' if cfg.sam.adaptive else ''})"
                                         if cfg.sam.variant != "sam" or cfg.sam.adaptive else "")
           if cfg.sam.rho else "no SAM")
    overrides = ", ".join(f"{k} {v}" for k, v in cfg.model.overrides.items())
    return (f"{cfg.model.name}{f' ({overrides})' if overrides else ''}; {share}; {cfg.train.epochs:g} epochs of "
            f"batch {cfg.train.batch_size}; {opt}; augmentation: {describe_augmentation(cfg)}; {sam}; "
            f"seed {cfg.train.seed}, subset seed {data.subset_seed}; {cfg.train.precision}")


# --------------------------------------------------------------------------- sections

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _gain_cell(pair: Pair):
    a, b = pair.vanilla.test_correct(), pair.sam.test_correct()
    if a is None or b is None or len(a) != len(b):
        return "-"
    est = paired_difference(a, b).scaled(100)
    text = f"{est.value:+.2f} [{est.low:+.2f}, {est.high:+.2f}]"
    css = "good" if est.low > 0 else "bad" if est.high < 0 else ""
    return (text, css) if css else text


def _paper_cell(run: ReportRun) -> str:
    """The paper's SAM accuracy and gain for this run's configuration or its family's
    representative (Table 2)."""
    model = run.cfg.model.name if run.cfg.model.name in paper.PAPER_NAMES else paper.REPRESENTATIVES.get(run.family)
    if model is None:
        return "-"
    fig = paper.figure("table2", model, "imagenet", "sam")
    return f"{paper.paper_name(model)}: {fig.value:.1f} ({fig.gain:+.1f})"


def regime_section(report: ReportRuns) -> html.Section:
    section = html.Section("Regime: what was trained, how, on what")
    rows = []
    for run in report.runs:
        rows.append([run.label, describe_regime(run.cfg), run.summary.get("steps", "-")])
    section.add(html.table(["Run", "Regime (from its config)", "Steps"], rows,
                           caption="Every run as its config describes it"))
    pairs = [f"{p.vanilla.label} / {p.sam.label}" for p in report.pairs]
    section.add(html.paragraph("Pairs compared (vanilla / SAM, differing only in SAM settings): "
                               + ("; ".join(pairs) if pairs else "none")
                               + (". Not paired: " + ", ".join(r.label for r in report.unpaired)
                                  if report.unpaired else "") + "."))
    if report.timings:
        stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report.timings.items())
        section.add(html.paragraph(f"Machine: {platform.node()} ({platform.machine()}, {torch.get_num_threads()} "
                                   f"threads, torch {torch.__version__}); wall time per stage: {stages}."))
    return section


def training_section(report: ReportRuns) -> html.Section:
    section = html.Section("Accuracy and throughput (shaped like the paper's Table 2)")
    section.add(html.paragraph(
        "Test top-1 with its 95% Wilson interval; SAM gain = SAM minus vanilla on the same test images with a 95% "
        "paired bootstrap interval (green: above 0, red: below 0). Throughput: training images per second per "
        "device at steady state (median over log intervals after the first), with batch and precision. The "
        "paper's column gives its ImageNet figure for the run's configuration, or for its family's "
        "representative when the run is a small model (a different scale, shown for shape only)."))
    sam_of = {id(p.sam): p for p in report.pairs}
    rows = []
    for run in report.runs:
        s = run.summary
        accuracy = s.get("test_accuracy")
        interval = (accuracy_interval(round(accuracy * s["test_images"]), s["test_images"])
                    if accuracy is not None else None)
        acc_text = f"{_pct(accuracy)} [{_pct(interval.low)}, {_pct(interval.high)}]" if interval else "-"
        speed = s.get("train_images_per_s_per_device")
        speed_text = f"{speed:.0f} (batch {s.get('batch_size')}, {s.get('precision')})" if speed else "-"
        pair = sam_of.get(id(run))
        rows.append([run.label, f"{s.get('parameters', 0) / 1e3:.0f}k" if s.get("parameters") else "-",
                     speed_text, f"{run.fraction:.3g}", f"{run.cfg.train.epochs:g}", f"{run.cfg.sam.rho:g}",
                     acc_text, _gain_cell(pair) if pair else "", _paper_cell(run)])
    section.add(html.table(["Run", "#params", "Train img/s/device", "Data fraction", "Epochs", "SAM rho",
                            "Test top-1 % [95%]", "SAM gain, points [95%]", "Paper (ImageNet, SAM (gain))"],
                           rows, caption="Test accuracy of each run"))
    fig = training_curves(report.runs)
    if fig is not None:
        section.add(html.figure(fig, "Training loss (left) and test accuracy (right) per epoch; dashed: SAM runs."))
    return section


def training_curves(runs: Sequence[ReportRun]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"vit": "tab:blue", "mixer": "tab:orange", "resnet": "tab:green"}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = False
    for run in runs:
        style = dict(color=colors.get(run.family, "tab:gray"), linestyle="--" if run.sam else "-", label=run.label)
        train_log = read_metrics(run.run_dir, "train")
        if train_log:
            ax_loss.plot([r["epoch"] for r in train_log], [r["loss"] for r in train_log], **style)
            drawn = True
        evals = [r for r in read_metrics(run.run_dir, "eval") if r.get("test_accuracy") is not None]
        ax_acc.plot([r["epoch"] for r in evals], [100 * r["test_accuracy"] for r in evals], marker="o", **style)
    if not drawn:
        plt.close(fig)
        return None
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- claims evidence

def _by_seed(pairs: Sequence[Pair]) -> list[Pair]:
    return sorted(pairs, key=lambda p: (p.vanilla.cfg.train.seed, p.vanilla.cfg.data.subset_seed))


def main_pairs(report: ReportRuns, family: str, key: Callable[[Pair], str] = lambda p: p.family,
               objective: str = "classification") -> list[Pair]:
    """A family's pairs (``key``: the family of a pair; the model name also works) trained
    with ``objective``, at the main training fraction, one per seed: the fraction with the
    most pairs over all families (the one the families share, so that they are compared
    in one regime), then with the most pairs of this family, the largest on a tie."""
    pairs = [p for p in report.pairs if key(p) == family and p.vanilla.cfg.train.objective == objective]
    if not pairs:
        return []
    everywhere = Counter(p.vanilla.fraction for p in report.pairs)
    here = Counter(p.vanilla.fraction for p in pairs)
    main = max(here, key=lambda f: (everywhere[f], here[f], f))
    return _by_seed([p for p in pairs if p.vanilla.fraction == main])


def evidence(report: ReportRuns, measured: Callable[..., dict | None]) -> dict:
    """The claims scoreboard's evidence (``vitsam.claims``) from the runs' own files and
    their evaluator results (``measured(run, name, **option_filter)`` -> the newest
    result or None): claims (a)-(f) from the standard-trained pairs, (g) from the
    adversarially trained ones."""
    families = {}
    for family in claims_lib.FAMILIES:
        pairs, adversarial = main_pairs(report, family), main_pairs(report, family, objective="adversarial")
        if not pairs and not adversarial:
            continue
        first = (pairs or adversarial)[0].vanilla
        entry: dict = {"model": first.cfg.model.name, "params": first.summary.get("parameters"), "missing": {}}
        if pairs:
            _add_standard(entry, report, family, pairs, measured)
        if adversarial:
            _add_adversarial(entry, adversarial[0], measured)
        entry["missing"] = {k: v for k, v in entry["missing"].items() if k not in entry}
        families[family] = entry
    return {"families": families}


def _add_standard(entry: dict, report: ReportRuns, family: str, pairs: Sequence[Pair], measured) -> None:
    """Accuracy, geometry, corruptions, PGD and data fractions of the standard-trained pairs."""
    from vitsam.robustness.correctness import corruption_scores, correct_vector

    first = pairs[0]
    clean = [first.vanilla.test_correct(), first.sam.test_correct()]
    if all(c is not None for c in clean):
        entry["clean"] = {"vanilla": clean[0], "sam": clean[1]}
    accs = [(p.vanilla.summary.get("test_accuracy"), p.sam.summary.get("test_accuracy")) for p in pairs]
    if all(a is not None and b is not None for a, b in accs):
        entry["seed_accuracy"] = {"vanilla": [a for a, _ in accs], "sam": [b for _, b in accs]}
    _add_geometry(entry, pairs, measured)
    corr = [measured(r, "corruptions") for r in (first.vanilla, first.sam)]
    if all(corr):
        names = [n for n in corr[0]["per_corruption"] if n in corr[1]["per_corruption"]]
        scores = [corruption_scores(c, names) for c in corr]
        if all(s is not None for s in scores):
            entry["corrupted"] = {"vanilla": scores[0], "sam": scores[1]}
    attacks = [measured(r, "attack") for r in (first.vanilla, first.sam)]
    if all(attacks) and attacks[0]["images_digest"] == attacks[1]["images_digest"]:
        entry["pgd"] = {_eps_label(e): {"vanilla": correct_vector(attacks[0], e),
                                        "sam": correct_vector(attacks[1], e)}
                        for e in attacks[0]["accuracy"] if e in attacks[1]["accuracy"]}
    fractions = _fractions(report, family)
    if len(fractions) >= 2:
        entry["fractions"] = fractions


def _add_adversarial(entry: dict, pair: Pair, measured) -> None:
    """PGD-10 correctness of an adversarially trained pair at its training radius (the
    paper's adversarial-training table evaluates there), on the same images."""
    from vitsam.robustness.correctness import correct_vector

    eps = pair.vanilla.cfg.adversarial.eps
    attacks = [measured(r, "attack") for r in (pair.vanilla, pair.sam)]
    if not all(attacks) or attacks[0]["images_digest"] != attacks[1]["images_digest"]:
        entry["missing"]["adversarial_pgd"] = "no PGD-10 result on the same images for both adversarially trained runs"
        return
    keys = [next((k for k in a["accuracy"] if math.isclose(float(k), eps, rel_tol=1e-4)), None)  # keys: 6 digits
            for a in attacks]
    if None in keys:
        entry["missing"]["adversarial_pgd"] = f"no PGD-10 result at the training radius {_eps_label(eps)}"
        return
    entry["adversarial_pgd"] = {"vanilla": correct_vector(attacks[0], keys[0]),
                                "sam": correct_vector(attacks[1], keys[1])}


def _eps_label(key: str) -> str:
    return f"{float(key) * 255:.3g}/255"


def _add_geometry(entry: dict, pairs: Sequence[Pair], measured) -> None:
    """lambda_max (training and held-out images), NTK kappa and sparsity per seed, from
    the runs' geometry results."""
    for key, split in (("lambda_max", "train"), ("lambda_max_heldout", "val")):
        hessian = [[measured(r, "hessian", split=split) for r in (p.vanilla, p.sam)] for p in pairs]
        if all(all(h) for h in hessian):
            entry[key] = {"vanilla": [h[0]["lambda_max"] for h in hessian], "sam": [h[1]["lambda_max"] for h in hessian]}
            subsets = [(h.get("spread") or {}).get("lambda_max", {}).get("values") for h in hessian[0]]
            if all(subsets):
                entry[f"{key}_subsets"] = {"vanilla": subsets[0], "sam": subsets[1]}
        else:
            entry["missing"][key] = f"no Hessian result on {split} images for every run (vitsam analyze)"
    ntk = [measured(r, "ntk") for r in (pairs[0].vanilla, pairs[0].sam)]
    if all(ntk):
        # the paper's kappa is of J J^T over all outputs: the full kernel where both runs have it
        kernel = "full" if all(_ntk_blocks(n, "full") for n in ntk) else ntk[0].get("headline_kernel", "trace")
        blocks = [_ntk_blocks(n, kernel) for n in ntk]
        if all(b is not None for b in blocks):
            entry["ntk_kappa"], entry["ntk_kernel"] = {"vanilla": blocks[0], "sam": blocks[1]}, kernel
    sparsity = [[measured(r, "sparsity") for r in (p.vanilla, p.sam)] for p in pairs]
    if all(all(s) and all("per_block" in x for x in s) for s in sparsity):
        entry["sparsity"] = {"vanilla": [_mean_per_block(s[0]) for s in sparsity],
                             "sam": [_mean_per_block(s[1]) for s in sparsity]}


def _ntk_blocks(result: dict, kernel: str) -> list | None:
    """Per-block kappas of ``kernel`` in an NTK result (None when it was not measured)."""
    values = (result.get(kernel) or {}).get("per_block")
    return list(values) if values else None


def _mean_per_block(result: dict) -> list[float]:
    """Active fraction per block, averaged over the block's MLPs (Mixer: token and channel)."""
    curves = list(result["per_block"].values())
    return [float(np.mean(values)) for values in zip(*curves)]


def _fractions(report: ReportRuns, family: str) -> dict:
    """Per training fraction, the first seed's pair: per-image test correctness."""
    found = {}
    for pair in _by_seed([p for p in report.pairs if p.family == family]):
        key = f"{pair.vanilla.fraction:g}"
        a, b = pair.vanilla.test_correct(), pair.sam.test_correct()
        if key not in found and a is not None and b is not None:
            found[key] = {"vanilla": a, "sam": b}
    return found


def claims_section(rows: list) -> html.Section:
    section = html.Section("Claims of the paper: scoreboard")
    verdicts = [r.verdict for r in rows]
    section.add(html.paragraph(
        f"{verdicts.count(claims_lib.REPRODUCED)} reproduced, {verdicts.count(claims_lib.NOT_REPRODUCED)} not "
        f"reproduced, {verdicts.count(claims_lib.INCONCLUSIVE)} inconclusive, each by the rule in its row, computed "
        f"from the intervals (never written by hand). The same rows are in claims.json."))
    section.add(claims_lib.html_table(rows))
    return section


# --------------------------------------------------------------------------- the whole page

def model_of(pair: Pair) -> str:
    return pair.vanilla.cfg.model.name


def geometry_groups(report: ReportRuns) -> list[list[ReportRun]]:
    """What the geometry section shows, one group per model: its vanilla/SAM pair at the
    main fraction, first seed (the pair the claims use), or a run without a pair alone."""
    kinds = list(dict.fromkeys((model_of(p), p.vanilla.cfg.train.objective) for p in report.pairs))
    pairs = [main_pairs(report, model, model_of, objective)[0] for model, objective in kinds]
    return [[p.vanilla, p.sam] for p in pairs] + [[run] for run in report.unpaired]


def geometry(report: ReportRuns, device: str, log) -> html.Section:
    from vitsam.analysis.report import geometry_section

    return geometry_section([[(run.label, run.run_dir) for run in group] for group in geometry_groups(report)])


def robustness(report: ReportRuns, device: str, log) -> html.Section:
    from vitsam.robustness.report import robustness_section

    return robustness_section([(run.label, run.run_dir) for run in report.runs])


SECTIONS = {"training": lambda report, device, log: training_section(report), "geometry": geometry,
            "robustness": robustness}

EVALUATED_SECTIONS = ("geometry", "robustness")


def evaluate_runs(report: ReportRuns, sections: Sequence[str], device: str, log) -> None:
    """Run the evaluators each section shows and the claims read, reusing any result
    saved for the same weights: the whole geometry for the runs the geometry section
    shows (and the vanilla -> SAM interpolation of each pair), lambda_max and sparsity
    for the other seeds the claims read, the robustness evaluators for every run."""
    from vitsam.analysis.report import CLAIMS_REQUESTS, GEOMETRY_REQUESTS, measure_interpolation

    for section in sections:
        if section not in EVALUATED_SECTIONS:
            continue
        start = time.perf_counter()
        if section == "geometry":
            shown = geometry_groups(report)
            for group in shown:
                for run in group:
                    _measure(run, GEOMETRY_REQUESTS, device, log)
            shown_dirs = {run.run_dir for group in shown for run in group}
            for family in claims_lib.FAMILIES:
                for pair in main_pairs(report, family):
                    for run in (pair.vanilla, pair.sam):
                        if run.run_dir not in shown_dirs:
                            _measure(run, CLAIMS_REQUESTS, device, log)
            for group in shown:
                if len(group) == 2:
                    measure_interpolation(group[0].run_dir, group[1].run_dir, device=device, log=log)
        else:
            for run in report.runs:
                _measure(run, (("corruptions", None), ("attack", None)), device, log)
        report.timings[section] = report.timings.get(section, 0.0) + time.perf_counter() - start


def _measure(run: ReportRun, requests, device: str, log) -> None:
    """``requests`` on one run; held-out images only where the run holds some out."""
    from vitsam.evaluators.protocol import measure

    wanted = [(name, options) for name, options in requests
              if (options or {}).get("split") != "val" or run.cfg.data.val_fraction > 0]
    measure(run.run_dir, wanted, device=device, log=log, any_options=True)


def measured_result(run: ReportRun, name: str, **where) -> dict | None:
    from vitsam.evaluators.protocol import find_result

    return find_result(run.run_dir, name, **where)


def build_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None,
                 labels: Sequence[str] | None = None, sections: Sequence[str] = ("training", "geometry", "robustness"),
                 evaluate: bool = True, device: str = "auto", timings: dict | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write the report for ``run_dirs`` to ``out`` (and ``claims.json`` beside it)."""
    if not run_dirs:
        raise VitsamError("vitsam report needs at least one run directory")
    runs = [load_report_run(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    pairs, unpaired = pair_runs(runs)
    report = ReportRuns(runs, pairs, unpaired, dict(timings or {}))
    log(f"[report] {len(runs)} runs, {len(pairs)} vanilla/SAM pairs: "
        + ("; ".join(f"{p.vanilla.label} / {p.sam.label}" for p in pairs) or "none"))
    if evaluate:
        evaluate_runs(report, sections, device, log)
    body = [SECTIONS[name](report, device, log) for name in sections]
    rows = claims_lib.scoreboard(evidence(report, measured_result))
    out = Path(out)
    claims_lib.write_json(rows, out.parent / "claims.json")
    title = title or f"vitsam report: {len(runs)} runs"
    meta = f"{time.strftime('%Y-%m-%d %H:%M')}; runs: " + ", ".join(str(r.run_dir) for r in runs)
    return html.write(out, title, [claims_section(rows), regime_section(report), *body], meta)


# --------------------------------------------------------------------------- CLI

def cmd_report(args) -> None:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in sections:
        if name not in SECTIONS:
            raise unknown_choice("report section", name, SECTIONS)
    path = build_report(args.runs, args.out, args.title, sections=sections, evaluate=not args.no_evaluate,
                        device=args.device)
    print(f"report: {path}\nclaims: {path.parent / 'claims.json'}")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="one HTML page for any runs: the paper's tables beside ours, claims with verdicts",
        description="Pair vanilla and SAM runs that differ only in SAM settings, run (or reuse) the evaluators each "
                    "section needs, and write a self-contained HTML report with the paper's figures beside ours "
                    "and a claims scoreboard (also written as claims.json beside the report).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report.html")
    p.add_argument("--title")
    p.add_argument("--sections", default="training,geometry,robustness",
                   help="comma-separated: training, geometry, robustness (default all)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="draw from cached results only (missing ones show as not measured)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_report)
