"""``vitsam paper``: run one of the paper's tables and report it beside the paper's figures.

    vitsam paper --list
    vitsam paper data-efficiency --scale small --out runs/paper
    vitsam paper adversarial --scale imagenet --data folder:/data/imagenet --model vit_b16

Results: ``OUT/TABLE/<run>/`` (run directories), ``OUT/TABLE/report.html`` (the table),
``OUT/TABLE/report.txt`` (the same as printed) and ``OUT/report.html`` (every table run
so far under OUT). The report is rewritten after each run, so an interrupted table keeps
what it finished; running the same command again reuses finished runs and resumes the
interrupted one.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.experiments.runs import Run, execute
from vitsam.experiments.tables import SCALES, TABLES, FMNIST_TRAIN_IMAGES, PaperTable, Scope, get_table
from vitsam.paper import family_of
from vitsam.report import html

SECTION = "section.html"

# Training images per second of the tiny models at 28 px, batch 128, one torch thread on
# the shared 2-core CPU at a load of about 6 (measured with `vitsam train`, 60 steps):
# what `--list` and `--dry-run` estimate small-scale wall time from.
SMALL_IMAGES_PER_S = {"vit": 600, "mixer": 900, "resnet": 330}
TEST_IMAGES = 10_000
ROBUSTNESS_SECONDS = 90          # PGD-10 + 19 x 5 corruptions of 500 test images, one tiny model


def passes(cfg) -> float:
    """Forward-backward passes per training image, relative to plain classification."""
    sam = 2.0 if cfg.sam.rho > 0 else 1.0
    if cfg.train.objective == "adversarial":
        return sam + cfg.adversarial.steps              # each attack step: a forward and a backward
    if cfg.train.objective == "contrastive":
        return 2 * sam + 2 / 3                           # two views; two key forwards (a third of a step each)
    augment = 1.1 if cfg.augment.randaugment_layers or cfg.augment.mixup_alpha else 1.0
    return sam * augment


def estimate_seconds(run: Run) -> float:
    """Small scale: wall time of one run on the shared 2-core CPU (see SMALL_IMAGES_PER_S)."""
    cfg = run.config
    rate = SMALL_IMAGES_PER_S[family_of(cfg.model.name)] * (28 / cfg.data.img_size) ** 2
    images = cfg.train.epochs * FMNIST_TRAIN_IMAGES * cfg.data.train_fraction
    evaluations = cfg.train.epochs / cfg.train.eval_every_epochs + 1
    seconds = images * passes(cfg) / rate + evaluations * TEST_IMAGES / (3 * rate)
    return seconds + (ROBUSTNESS_SECONDS if run.evaluate is not None else 0)


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def list_tables() -> str:
    lines = [f"{'table':<16} {'small scale (Fashion-MNIST, 2-core CPU)':<44} imagenet scale", ""]
    for table in TABLES.values():
        small = table.runs(Scope(scale="small"))
        imagenet = table.default_models["imagenet"]
        per_model = len(small) // len(table.default_models["small"])
        cost = f"{len(small)} runs, ~{duration(sum(map(estimate_seconds, small)))}"
        lines.append(f"{table.key:<16} {cost:<44} {per_model * len(imagenet)} runs ({', '.join(imagenet)})")
        lines.append(f"{'':<16} {table.title}")
    lines.append("\nEstimated with one torch thread at a load of ~6; --model picks other models, --dry-run "
                 "lists a table's runs.")
    return "\n".join(lines)


def write_reports(table: PaperTable, runs: list[Run], scope: Scope, started: float) -> str:
    """OUT/TABLE/report.html and report.txt, and OUT/report.html with every table so far."""
    report = table.report(runs, scope)
    directory = table.directory(scope)
    directory.mkdir(parents=True, exist_ok=True)
    done = sum(run.finished for run in runs)
    meta = (f"{done} of {len(runs)} runs finished; scale {scope.scale}; {platform.node()} ({platform.machine()}); "
            f"this invocation {time.perf_counter() - started:.0f}s")
    html.write(directory / "report.html", f"vitsam paper {table.key}", [report.section], meta)
    (directory / SECTION).write_text(report.section.to_html())
    (directory / "report.txt").write_text(report.text + "\n")
    sections = [_Stored((Path(scope.out) / key / SECTION).read_text()) for key in TABLES
                if (Path(scope.out) / key / SECTION).is_file()]
    html.write(Path(scope.out) / "report.html", "vitsam: the paper's tables", sections,
               "each section as its last `vitsam paper TABLE` run left it")
    return report.text


class _Stored(html.Section):
    """A section already rendered to HTML (from OUT/TABLE/section.html)."""

    def __init__(self, fragment: str):
        super().__init__("")
        self.fragment = fragment

    def to_html(self) -> str:
        return self.fragment


def paper_command(args) -> int:
    if args.list:
        print(list_tables())
        return 0
    if not args.table:
        raise VitsamError(f"name a table ({', '.join(TABLES)}) or pass --list")
    table = get_table(args.table)
    scope = Scope(scale=args.scale, out=Path(args.out), models=tuple(args.model or ()), data=args.data,
                  target=args.target, overrides=tuple(args.set or ()), corrupted_sets=tuple(args.corrupted_set or ()))
    runs = table.runs(scope)
    if args.dry_run:
        for run in runs:
            state = "finished" if run.finished else "to run"
            cost = f"~{duration(estimate_seconds(run))}" if scope.small else ""
            print(f"{run.key:<40} {state:<9} {cost:>8}  {run.label}")
        if scope.small:
            print(f"total ~{duration(sum(estimate_seconds(r) for r in runs if not r.finished))} to run")
        return 0
    started = time.perf_counter()
    if not args.report_only:
        execute(runs, log=lambda text: print(f"[paper {table.key}] {text}", flush=True),
                on_finished=lambda run: write_reports(table, runs, scope, started))
    print(write_reports(table, runs, scope, started))
    print(f"report: {table.directory(scope) / 'report.html'} (all tables: {Path(scope.out) / 'report.html'})")
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Define ``vitsam paper``; the command function is ``args.func(args) -> int``."""
    parser = subparsers.add_parser(
        "paper", help="run one of the paper's tables and report it beside the paper's figures",
        description="Run the experiments of one of the paper's tables (finished runs reused, interrupted ones "
                    "resumed) and write OUT/TABLE/report.html with the paper's figures beside ours.")
    parser.add_argument("table", nargs="?", metavar="TABLE", help=f"one of: {', '.join(TABLES)}")
    parser.add_argument("--list", action="store_true", help="name the tables and what each costs")
    parser.add_argument("--scale", default="small", choices=SCALES,
                        help="small: tiny models on Fashion-MNIST (CPU); imagenet: the paper's models and recipes")
    parser.add_argument("--out", default="runs/paper", help="where the runs and reports go (default %(default)s)")
    parser.add_argument("--model", action="append", metavar="NAME", help="a model to run (repeatable; default: "
                                                                         "the table's models at this scale)")
    parser.add_argument("--data", metavar="SPEC", help="the training data set at imagenet scale, e.g. "
                                                       "folder:/data/imagenet")
    parser.add_argument("--target", metavar="SPEC", help="transfer table, imagenet scale: the target data set, "
                                                         "e.g. cifar10:/data/cifar10")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override for every run, e.g. --set train.device=cuda (repeatable)")
    parser.add_argument("--corrupted-set", action="append", metavar="LAYOUT:PATH",
                        help="adversarial table: a stored corrupted test set (imagenet-c:/data/imagenet-c)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs (and their estimated cost), train nothing")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    parser.set_defaults(func=paper_command)
    return parser
