"""The paper's tables as experiments: for each, the runs it needs (``plan``) and its report
in the paper's shape with the paper's own figures beside ours (``report``).

Tables (``vitsam paper --list``):

- ``table2``: SAM vs. vanilla from scratch, accuracy and throughput (the paper's Table 2);
- ``data-efficiency``: vanilla / SAM / AUG / SAM + AUG on training fractions 1, 1/2, 1/4,
  1/10 (the paper's "SAM vs. strong augmentations" table);
- ``adversarial``: adversarial training with and without SAM, evaluated clean, under
  PGD-10 and on corrupted images (the paper's adversarial-training table);
- ``contrastive``: MoCo v3 pre-training with and without SAM, evaluated by a linear probe
  and by fine-tuning (the paper's contrastive-learning ablation);
- ``transfer``: a vanilla and a SAM run fine-tuned on another data set and resolution.

Each table runs at ``imagenet`` scale (the paper's models and recipes; the data set from
the user) or ``small`` scale (the tiny models on Fashion-MNIST, a 2-core CPU).
Accuracy differences carry 95% paired bootstrap intervals over the test images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vitsam import paper, presets
from vitsam.config import Config
from vitsam.errors import VitsamError, unknown_choice
from vitsam.experiments import presets as recipes
from vitsam.experiments.runs import Run, gain, marked, percent, signed
from vitsam.report import html
from vitsam.stats import difference_of_differences

SCALES = ("small", "imagenet")
FMNIST_TRAIN_IMAGES = 60_000
IMAGENET_PLACEHOLDER = "folder:/path/to/imagenet"


@dataclass(frozen=True)
class Scope:
    """What one invocation asks for."""
    scale: str = "small"
    out: Path = Path("runs/paper")
    models: tuple[str, ...] = ()          # () = the table's default models at this scale
    data: str | None = None               # the ImageNet data set (imagenet scale)
    target: str | None = None             # the transfer target data set (imagenet scale)
    overrides: tuple[str, ...] = ()       # key=value for every run
    corrupted_sets: tuple[str, ...] = ()  # stored corrupted test sets, layout:path (adversarial table)

    @property
    def small(self) -> bool:
        return self.scale == "small"


def configure(preset: str, scope: Scope, extra: list[str] | tuple = ()) -> Config:
    """A preset with the table's settings (``extra``) and then the user's overrides."""
    cfg = presets.resolve(preset, None, list(extra) + list(scope.overrides))
    if not scope.small:
        if scope.data:
            cfg.data.dataset = scope.data
        elif cfg.data.dataset == IMAGENET_PLACEHOLDER:
            raise VitsamError("--scale imagenet needs the data set: pass --data folder:/path/to/imagenet "
                              "(class folders of train/ and val/)")
    return cfg


def base_preset(model: str) -> str:
    return f"{model}_fmnist" if model.endswith("_tiny") else f"{model}_imagenet"


def representative(model: str, table: str) -> str | None:
    """The paper model whose figures stand beside ours: the model itself when the paper
    has it in ``table``, else its family's representative (ViT-B/16 for vit_tiny)."""
    rows = {f.model for f in paper.figures(table)}
    if model in rows:
        return model
    candidate = paper.REPRESENTATIVES.get(paper.family_of(model))
    return candidate if candidate in rows else None


def paper_value(table: str, model: str | None, column: str, variant: str) -> str:
    if model is None:
        return "—"
    found = [f for f in paper.figures(table, model, column, variant)]
    return f"{found[0].value:.1f}" if found else "—"


def paper_gain(table: str, model: str | None, column: str, variant: str = "sam", over: str = "vanilla") -> str:
    if model is None or not paper.figures(table, model, column, variant):
        return "—"
    return f"{paper.figure(table, model, column, variant).value - paper.figure(table, model, column, over).value:+.1f}"


def paper_sam_cell(table: str, model: str | None, column: str) -> str:
    """The paper's SAM figure with its gain over vanilla, e.g. '62.0 (+7.7)'."""
    return f"{paper_value(table, model, column, 'sam')} ({paper_gain(table, model, column)})"


def ours_with_gain(run: Run | None, base: Run | None) -> str | tuple[str, str]:
    """Our accuracy with its paired gain over ``base``, e.g. '55.0 (+5.0 [+3.1, +7.0])'."""
    g = gain(base, run)
    return marked(f"{percent(run)} ({signed(g)})", g)


def by_tags(runs: list[Run], **tags) -> Run | None:
    """The run whose tags include ``tags``."""
    for run in runs:
        if all(run.tags.get(k) == v for k, v in tags.items()):
            return run
    return None


def models_of(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(run.tags["model"] for run in runs))


def text_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table for the terminal (cells as strings; (text, css) pairs unwrapped)."""
    cells = [[c[0] if isinstance(c, tuple) else str(c) for c in row] for row in [headers] + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


@dataclass(frozen=True)
class Report:
    section: html.Section
    text: str


def one_table(title: str, note: str, headers: list[str], rows: list[list], caption: str) -> Report:
    """A report of one table: its section (title, note, table) and the same as text."""
    section = html.Section(title).add(html.paragraph(note)).add(html.table(headers, rows, caption=caption))
    return Report(section, text_table(headers, rows))


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    paper_table: str | None                 # key in vitsam.paper.TABLES
    default_models: dict[str, tuple[str, ...]]
    plan: Callable[[Scope, str], list[Run]]           # (scope, table directory) -> runs
    report: Callable[[list[Run], Scope], Report]
    notes: str = ""

    def models(self, scope: Scope) -> tuple[str, ...]:
        return scope.models or self.default_models[scope.scale]

    def runs(self, scope: Scope) -> list[Run]:
        if scope.scale not in SCALES:
            raise unknown_choice("--scale", scope.scale, SCALES)
        return self.plan(scope, self.models(scope))

    def directory(self, scope: Scope) -> Path:
        return Path(scope.out) / self.key


def run_at(scope: Scope, table: str, key: str, label: str, cfg: Config, **tags) -> Run:
    cfg.name = f"{table}/{key}"
    return Run(key=key, label=label, config=cfg, run_dir=Path(scope.out) / table / key, tags=tags)


# =========================================================================== table2

def plan_table2(scope: Scope, models) -> list[Run]:
    runs = []
    for model in models:
        for variant, suffix in (("vanilla", ""), ("sam", "_sam")):
            cfg = configure(base_preset(model) + suffix, scope)
            runs.append(run_at(scope, "table2", f"{model}/{variant}", f"{model} {variant}", cfg,
                               model=model, variant=variant))
    return runs


def throughput(run: Run | None) -> str:
    summary = run.summary() if run is not None else None
    if not summary or summary.get("train_images_per_s_per_device") is None:
        return "—"
    return (f"{summary['train_images_per_s_per_device']:.0f} ({summary['batch_size']}, {summary['precision']}, "
            f"{summary['device_type']})")


def report_table2(runs: list[Run], scope: Scope) -> Report:
    headers = ["Model", "Vanilla", "SAM", "SAM gain [95% CI]", "paper model", "paper vanilla", "paper SAM",
               "paper gain", "train img/s/device, vanilla (batch, precision, device)", "SAM"]
    rows = []
    for model in models_of(runs):
        vanilla, sam = by_tags(runs, model=model, variant="vanilla"), by_tags(runs, model=model, variant="sam")
        ref = representative(model, "table2")
        g = gain(vanilla, sam)
        rows.append([model, percent(vanilla), percent(sam), marked(signed(g), g), paper.PAPER_NAMES.get(ref, "—"),
                     paper_value("table2", ref, "imagenet", "vanilla"), paper_value("table2", ref, "imagenet", "sam"),
                     paper_gain("table2", ref, "imagenet"), throughput(vanilla), throughput(sam)])
    return one_table("SAM vs. vanilla from scratch (the paper's Table 2)",
        "Test top-1 (%) of each model trained from scratch with its base optimizer and with SAM; the gain "
        "carries a 95% paired bootstrap interval over the test images. Throughput is training images per "
        "second per device at steady state (the median over logging intervals after the first), batch and "
        "precision stated; a SAM step costs two forward-backward passes. The paper's columns are its "
        "ImageNet figures (throughput on TPUv3 there).",
        headers, rows, "Ours beside the paper's Table 2")


# =========================================================================== data efficiency

FRACTIONS = {"full": 1.0, "1/2": 0.5, "1/4": 0.25, "1/10": 0.1}
VARIANT_PRESETS = {"vanilla": "", "sam": "_sam", "aug": "_aug", "sam_aug": "_aug_sam"}
VARIANT_NAMES = {"vanilla": "Vanilla", "sam": "SAM", "aug": "AUG", "sam_aug": "SAM + AUG"}
# Small scale: a class-balanced quarter of Fashion-MNIST (15,000 images) stands in for
# ImageNet, and every fraction trains the same number of epochs, as the paper trains
# every subset with its full recipe. 12 epochs show each image often enough that the
# smaller subsets overfit; the four variants of one tiny ViT take about an hour on the
# shared 2-core CPU.
SMALL_BASE_FRACTION = 0.25
SMALL_EPOCHS = 12.0
SMALL_EVAL_EVERY = 4.0


def fraction_key(column: str) -> str:
    return column.replace("/", "-")


def plan_data_efficiency(scope: Scope, models) -> list[Run]:
    runs = []
    base_fraction = SMALL_BASE_FRACTION if scope.small else 1.0
    extra_small = [f"train.epochs={SMALL_EPOCHS}", f"train.eval_every_epochs={SMALL_EVAL_EVERY}",
                   "data.val_fraction=0"]   # fractions of all 60,000 images, no hold-out
    for model in models:
        for column, fraction in FRACTIONS.items():
            for variant, suffix in VARIANT_PRESETS.items():
                extra = [f"data.train_fraction={base_fraction * fraction}"] + (extra_small if scope.small else [])
                cfg = configure(base_preset(model) + suffix, scope, extra)
                runs.append(run_at(scope, "data-efficiency", f"{model}/{fraction_key(column)}/{variant}",
                                   f"{model} {column} {VARIANT_NAMES[variant]}", cfg,
                                   model=model, column=column, variant=variant))
    return runs


def report_data_efficiency(runs: list[Run], scope: Scope) -> Report:
    section = html.Section("SAM vs. strong augmentations on training subsets (the paper's \"SAM vs. strong "
                           "augmentations\" table)")
    base = SMALL_BASE_FRACTION if scope.small else 1.0
    where = (f"Fashion-MNIST: a class-balanced {base:g} of its 60,000 training images is the full set here, "
             f"each fraction a class-balanced subset of it, {SMALL_EPOCHS:g} epochs each"
             if scope.small else "ImageNet and its class-balanced subsets, the paper's recipes")
    section.add(html.paragraph(
        f"Test top-1 (%) with the base optimizer (Vanilla), SAM, strong augmentation (AUG: RandAugment + mixup) "
        f"and both, on fractions of the training set ({where}). The paper's figures (its ImageNet models) stand "
        f"beside ours. Differences carry 95% paired bootstrap intervals over the test images; green: the "
        f"interval excludes zero in favour of the first term, red: against it."))
    texts = []
    for model in models_of(runs):
        ref = representative(model, "data_efficiency")
        ref_name = paper.PAPER_NAMES.get(ref, "—")
        mine = [r for r in runs if r.tags["model"] == model]
        headers = ["Fraction", "#images"] + [VARIANT_NAMES[v] for v in VARIANT_PRESETS] + \
                  [f"paper {ref_name}: {VARIANT_NAMES[v]}" for v in VARIANT_PRESETS]
        rows, diff_rows = [], []
        for column in FRACTIONS:
            cell = {v: by_tags(mine, column=column, variant=v) for v in VARIANT_PRESETS}
            images = round(FMNIST_TRAIN_IMAGES * base * FRACTIONS[column]) if scope.small else \
                paper.DATA_FRACTIONS[column][1]
            rows.append([column, f"{images:,}"] + [percent(cell[v]) for v in VARIANT_PRESETS] +
                        [paper_value("data_efficiency", ref, column, v) for v in VARIANT_PRESETS])
            diffs = [("sam", "vanilla"), ("aug", "vanilla"), ("sam_aug", "aug"), ("sam", "aug")]
            row = [column]
            for better, worse in diffs:
                g = gain(cell[worse], cell[better])
                row += [marked(signed(g), g), paper_gain("data_efficiency", ref, column, better, worse)]
            diff_rows.append(row)
        diff_headers = ["Fraction"]
        for better, worse in (("sam", "vanilla"), ("aug", "vanilla"), ("sam_aug", "aug"), ("sam", "aug")):
            diff_headers += [f"{VARIANT_NAMES[better]} − {VARIANT_NAMES[worse]}", "paper"]
        section.add(html.table(headers, rows, caption=f"{model}: test top-1 (%)"))
        section.add(html.table(diff_headers, diff_rows, caption=f"{model}: differences in points [95% CI]"))
        scarce = sam_gain_growth(mine, ref)
        section.add(html.paragraph(scarce))
        texts += [f"{model}: test top-1 (%)", text_table(headers, rows),
                  f"{model}: differences in points [95% CI]", text_table(diff_headers, diff_rows), scarce, ""]
    return Report(section, "\n".join(texts))


def sam_gain_growth(runs: list[Run], ref: str | None) -> str:
    """Does SAM help most where data is scarcest? (SAM gain at 1/10) - (SAM gain at full)."""
    pairs = []
    for column in ("1/10", "full"):
        a, b = by_tags(runs, column=column, variant="vanilla"), by_tags(runs, column=column, variant="sam")
        correct = (a.correct() if a else None, b.correct() if b else None)
        if any(c is None for c in correct):
            return "SAM's gain at 1/10 minus its gain on the full set: not all four runs have finished."
        pairs.append(correct)
    estimate = difference_of_differences(pairs[0], pairs[1]).scaled(100)
    theirs = ""
    if ref is not None:
        growth = paper.sam_gain("data_efficiency", ref, "1/10") - paper.sam_gain("data_efficiency", ref, "full")
        theirs = f"; the paper's {paper.PAPER_NAMES[ref]}: {growth:+.1f}"
    return (f"SAM's gain at 1/10 minus its gain on the full set: {signed(estimate)} points (95% interval, "
            f"independent paired bootstraps){theirs}.")


# =========================================================================== adversarial

PGD_STEPS = 10
SMALL_ROBUST_IMAGES = 500


def robustness_evaluation(scope: Scope) -> Callable[[Run], None]:
    """PGD-10 at the training radius and corrupted test images (made on the fly, or a
    stored set from --corrupted-set), saved in the run by the evaluator runner (reused
    when done on the same weights with the same options)."""
    def evaluate(run: Run) -> None:
        from vitsam.evaluators.protocol import evaluate_run

        a = run.config.adversarial
        images = {"images": SMALL_ROBUST_IMAGES} if scope.small else {}
        options = {"attack": {"attack": "pgd", "eps": (a.eps,), "norm": a.norm, "steps": PGD_STEPS, **images},
                   "corruptions": dict(images)}
        for text in scope.corrupted_sets[:1]:
            layout, _, path = text.partition(":")
            options["corrupted_set"] = {"layout": layout, "path": path}
        evaluate_run(run.run_dir, list(options), options, device=run.config.train.device)
    return evaluate


def plan_adversarial(scope: Scope, models) -> list[Run]:
    runs = []
    for model in models:
        for variant, suffix in (("vanilla", "_adv"), ("sam", "_adv_sam")):
            cfg = configure(base_preset(model) + suffix, scope)
            label = f"{model} adversarial" + (" + SAM" if variant == "sam" else "")
            run = run_at(scope, "adversarial", f"{model}/{variant}", label, cfg, model=model, variant=variant)
            run.evaluate = robustness_evaluation(scope)
            runs.append(run)
    return runs


def robust_numbers(run: Run | None) -> dict:
    """{"pgd10": %, "corrupted": %} from the run's saved robustness results (missing: None),
    with the per-image scores behind them ("pgd10_scores", "corrupted_scores": None when
    not kept) for paired intervals; a stored corrupted set (ImageNet-C) wins over
    corruptions made on the fly, and the mean over the 15 ImageNet-C corruptions over
    the mean of whatever was evaluated."""
    from vitsam.evaluators.protocol import find_result
    from vitsam.robustness.correctness import corruption_scores, correct_vector
    from vitsam.robustness.corruptions import CORRUPTIONS

    out = {"pgd10": None, "corrupted": None, "pgd10_scores": None, "corrupted_scores": None}
    if run is None or not run.finished:
        return out
    pgd = find_result(run.run_dir, "attack", attack="pgd", norm=run.config.adversarial.norm, steps=PGD_STEPS)
    if pgd is not None and pgd.get("accuracy"):
        eps = next(iter(pgd["accuracy"]))
        out["pgd10"], out["pgd10_scores"] = 100 * pgd["accuracy"][eps], correct_vector(pgd, eps)
    corrupted = find_result(run.run_dir, "corrupted_set") or find_result(run.run_dir, "corruptions")
    if corrupted is not None:
        # the paper's ImageNet-C column: the mean over the 15 standard corruptions
        standard = (corrupted.get("means") or {}).get("imagenet_c_15") or {}
        mean = standard.get("accuracy", corrupted.get("mean_accuracy"))
        out["corrupted"] = None if mean is None else 100 * mean
        if standard:
            out["corrupted_scores"] = corruption_scores(corrupted, CORRUPTIONS)
    return out


def robust_gain(base: dict, other: dict, key: str) -> str:
    """other - base in points with a 95% paired interval over the same images when both
    kept per-image scores, else the bare difference."""
    from vitsam.robustness.correctness import paired_gain

    a, b = base[f"{key}_scores"], other[f"{key}_scores"]
    if a is None or b is None or len(a) != len(b):
        return _delta(base[key], other[key])
    return signed(paired_gain(a, b).scaled(100))


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _delta(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{b - a:+.1f}"


def report_adversarial(runs: list[Run], scope: Scope) -> Report:
    headers = ["Model", "Training", "Clean top-1", "PGD-10 top-1", "Corrupted top-1", "paper model",
               "paper clean", "paper PGD-10", "paper corrupted (ImageNet-C)"]
    rows = []
    for model in models_of(runs):
        ref = representative(model, "adversarial")
        vanilla, sam = by_tags(runs, model=model, variant="vanilla"), by_tags(runs, model=model, variant="sam")
        rv, rs = robust_numbers(vanilla), robust_numbers(sam)
        eps = vanilla.config.adversarial.eps if vanilla else None
        rows.append([model, f"adversarial (eps {eps * 255:.0f}/255)" if eps else "adversarial", percent(vanilla),
                     _points(rv["pgd10"]), _points(rv["corrupted"]), paper.PAPER_NAMES.get(ref, "—"),
                     paper_value("adversarial", ref, "imagenet", "vanilla"),
                     paper_value("adversarial", ref, "pgd10", "vanilla"),
                     paper_value("adversarial", ref, "imagenet_c", "vanilla")])
        rows.append([model, "adversarial + SAM", ours_with_gain(sam, vanilla),
                     f"{_points(rs['pgd10'])} ({robust_gain(rv, rs, 'pgd10')})",
                     f"{_points(rs['corrupted'])} ({robust_gain(rv, rs, 'corrupted')})", ""] +
                    [paper_sam_cell("adversarial", ref, column) for column in ("imagenet", "pgd10", "imagenet_c")])
    return one_table("Adversarial training with and without SAM (the paper's adversarial-training table)",
        "Each model trained on PGD examples (L-inf, random start) made against its current weights at every "
        "step, with its base optimizer and with SAM on the adversarial loss; evaluated on clean test images, "
        f"under a {PGD_STEPS}-step PGD attack at the training radius, and on corrupted test images (mean over "
        "corruptions and severities). SAM rows give the gain over adversarial training without SAM in "
        "brackets with 95% paired intervals over the same images, as the paper prints its gains. The paper's vanilla figures "
        "are its SAM figures minus the printed gains.",
        headers, rows, "Top-1 (%), ours beside the paper's")


# =========================================================================== contrastive

def plan_contrastive(scope: Scope, models) -> list[Run]:
    runs = []
    for model in models:
        if paper.family_of(model) != "vit":
            raise VitsamError(f"the contrastive table is MoCo v3 for ViTs; {model!r} is not a ViT")
        base = base_preset(model)
        for variant, suffix in (("vanilla", "_moco"), ("sam", "_moco_sam")):
            pretrain = run_at(scope, "contrastive", f"{model}/{variant}/pretrain",
                              f"{model} MoCo v3{' + SAM' if variant == 'sam' else ''}", configure(base + suffix, scope),
                              model=model, variant=variant, stage="pretrain")
            runs.append(pretrain)
            for stage in ("probe", "finetune"):
                cfg = configure(f"{base}_{stage}", scope, [f"model.init_from={pretrain.run_dir}"])
                runs.append(run_at(scope, "contrastive", f"{model}/{variant}/{stage}", f"{pretrain.label}, {stage}",
                                   cfg, model=model, variant=variant, stage=stage))
    return runs


def report_contrastive(runs: list[Run], scope: Scope) -> Report:
    headers = ["Model", "Pre-training", "Linear probe", "Fine-tuned", "paper model", "paper fine-tuned"]
    rows = []
    for model in models_of(runs):
        ref = representative(model, "contrastive")
        cells = {(v, s): by_tags(runs, model=model, variant=v, stage=s)
                 for v in ("vanilla", "sam") for s in ("probe", "finetune")}
        rows.append([model, "MoCo v3", percent(cells["vanilla", "probe"]), percent(cells["vanilla", "finetune"]),
                     paper.PAPER_NAMES.get(ref, "—"), paper_value("contrastive", ref, "imagenet", "vanilla")])
        rows.append([model, "MoCo v3 + SAM", ours_with_gain(cells["sam", "probe"], cells["vanilla", "probe"]),
                     ours_with_gain(cells["sam", "finetune"], cells["vanilla", "finetune"]), "",
                     paper_sam_cell("contrastive", ref, "imagenet")])
    return one_table("Contrastive pre-training with and without SAM (the paper's contrastive-learning ablation)",
        "MoCo v3 pre-training (two views, momentum encoder, projection and prediction heads, symmetric InfoNCE) "
        "with AdamW and with SAM on the contrastive loss, then a linear probe (everything but the head frozen) "
        "and end-to-end fine-tuning from each. Gains in brackets with 95% paired intervals. The paper reports "
        "ViT-S/16 77.0 -> 78.1 and ViT-B/16 77.4 -> 80.0 with SAM.",
        headers, rows, "Test top-1 (%)")


# =========================================================================== transfer

def plan_transfer(scope: Scope, models) -> list[Run]:
    if not scope.small and not scope.target:
        raise VitsamError("--scale imagenet transfer needs the target data set: pass --target cifar10:/path "
                          "(or cifar100:/path, folder:/path)")
    runs = []
    for model in models:
        base = base_preset(model)
        for variant, suffix in (("vanilla", ""), ("sam", "_sam")):
            source = run_at(scope, "transfer", f"{model}/{variant}/source", f"{model} {variant}",
                            configure(base + suffix, scope), model=model, variant=variant, stage="source")
            extra = [f"model.init_from={source.run_dir}"]
            if scope.target:
                extra.append(f"data.dataset={scope.target}")
            target = configure(f"{base}_transfer", dataclasses.replace(scope, data=None), extra)
            runs += [source, run_at(scope, "transfer", f"{model}/{variant}/target", f"{source.label} -> transfer",
                                    target, model=model, variant=variant, stage="target")]
    return runs


def report_transfer(runs: list[Run], scope: Scope) -> Report:
    headers = ["Model", "Source training", "Source top-1", "Target", "Transfer top-1 (SAM gain [95% CI])"]
    rows = []
    for model in models_of(runs):
        vanilla = by_tags(runs, model=model, variant="vanilla", stage="target")
        for variant in ("vanilla", "sam"):
            source = by_tags(runs, model=model, variant=variant, stage="source")
            target = by_tags(runs, model=model, variant=variant, stage="target")
            data = target.config.data if target else None
            where = f"{data.dataset.split(':')[0]} {data.img_size} px, {data.train_fraction:g} of it" if data else "—"
            cell = ours_with_gain(target, vanilla) if variant == "sam" else percent(target)
            rows.append([model, "SAM" if variant == "sam" else "vanilla", percent(source), where, cell])
    return one_table("Transfer: fine-tuning vanilla and SAM runs on another data set and resolution",
        "Each source run (trained from scratch with its base optimizer or with SAM) fine-tuned with a new head "
        "at another resolution (ViT: position embeddings interpolated bicubically over the patch grid, class "
        "token kept; Mixer: the same token count). Our copy of the paper lacks its transfer figures, so no "
        "paper column is shown.",
        headers, rows, "Test top-1 (%)")


# =========================================================================== registry

TABLES: dict[str, PaperTable] = {t.key: t for t in (
    PaperTable("table2", "SAM vs. vanilla from scratch: accuracy and throughput", "table2",
               {"small": recipes.SMALL_MODELS, "imagenet": ("resnet152", "vit_b16", "mixer_b16")},
               plan_table2, report_table2),
    PaperTable("data-efficiency", "SAM vs. strong augmentations on 1, 1/2, 1/4, 1/10 of the training set",
               "data_efficiency", {"small": ("vit_tiny",), "imagenet": recipes.DATA_EFFICIENCY_MODELS},
               plan_data_efficiency, report_data_efficiency),
    PaperTable("adversarial", "adversarial training with and without SAM: clean, PGD-10, corrupted",
               "adversarial", {"small": recipes.SMALL_MODELS, "imagenet": recipes.ADVERSARIAL_MODELS},
               plan_adversarial, report_adversarial),
    PaperTable("contrastive", "MoCo v3 with and without SAM: linear probe and fine-tuning", "contrastive",
               {"small": ("vit_tiny",), "imagenet": recipes.CONTRASTIVE_MODELS},
               plan_contrastive, report_contrastive),
    PaperTable("transfer", "vanilla and SAM runs fine-tuned on another data set and resolution", None,
               {"small": recipes.SMALL_MODELS, "imagenet": recipes.TRANSFER_MODELS},
               plan_transfer, report_transfer),
)}


def get_table(name: str) -> PaperTable:
    if name not in TABLES:
        raise unknown_choice("paper table", name, TABLES)
    return TABLES[name]
