"""``vitsam analyze RUN_DIR``: run the geometry analyzers on a run's latest weights.

Results go to ``RUN_DIR/analysis/<name>.json`` (with the analyzer's options and the
checkpoint step) and figures to ``RUN_DIR/analysis/<figure>.png``. An analyzer whose
result exists is skipped unless forced, so an interrupted analysis resumes.

All analyzers see the same fixed, un-augmented training batches: a seeded random
subset of the run's training set (its class-balanced fraction, if it used one), with
the run's eval transform. Each takes the first examples it needs from them.
"""
from __future__ import annotations

import dataclasses
import json
import time
import typing
from pathlib import Path
from typing import Sequence

import torch

from vitsam.analysis import AnalysisResult, Batch
from vitsam.analysis.activations import ActivationSparsity
from vitsam.analysis.attention import AttentionMaps
from vitsam.analysis.hessian import HessianAnalysis
from vitsam.analysis.landscape import GaussianPerturbation, LossLandscape
from vitsam.analysis.ntk import NTKConditioning
from vitsam.errors import VitsamError, unknown_choice

ANALYZERS = {cls.name: cls for cls in (HessianAnalysis, NTKConditioning, LossLandscape,
                                       GaussianPerturbation, ActivationSparsity, AttentionMaps)}


def configure(name: str, overrides: dict | None = None):
    """An analyzer by name with keyword overrides of its options, checked and converted."""
    if name not in ANALYZERS:
        raise unknown_choice("analyzer", name, ANALYZERS)
    cls = ANALYZERS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise unknown_choice(f"option of analyzer {name!r}", key, fields)
        kwargs[key] = _convert(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def _convert(value, hint, where: str):
    """Command-line strings (and JSON values) to the option's type; tuples from "a,b,c"."""
    try:
        if hint is tuple:
            if isinstance(value, str):
                value = [_scalar(v.strip()) for v in value.split(",") if v.strip()]
            return tuple(value)
        if hint is bool and isinstance(value, str):
            return {"true": True, "1": True, "false": False, "0": False}[value.lower()]
        return hint(value)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError):
        raise VitsamError(f"analysis option {where}: cannot use {value!r} as "
                          f"{getattr(hint, '__name__', hint)}") from None


def _scalar(text: str):
    try:
        return json.loads(text)  # numbers, true/false
    except json.JSONDecodeError:
        return text  # a bare word: a name


def training_batches(cfg, examples: int, batch_size: int, device: torch.device) -> list[Batch]:
    """``examples`` un-augmented training images of the run, a seeded random subset."""
    from vitsam.data import Loader
    from vitsam.data.build import build_source

    source = build_source(cfg.data, "train")
    picked = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:examples]
    loader = Loader(source.select(picked.sort().values), batch_size, train=False,
                    img_size=cfg.data.img_size, eval_crop_fraction=cfg.data.eval_crop_fraction)
    return [(x.to(device), y.to(device)) for x, y in loader.iterate(0)]


def save_result(result: AnalysisResult, name: str, out_dir: Path, extra: dict) -> dict:
    """Write the figures as PNGs and the metrics (with ``extra``) as JSON; return the record."""
    import matplotlib.pyplot as plt

    from vitsam.train.checkpoint import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    for figure_name, fig in result.figures.items():
        fig.savefig(out_dir / f"{figure_name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    record = {**extra, **result.metrics}
    atomic_write_json(record, out_dir / f"{name}.json")
    return record


def analyze_run(run_dir: str | Path, only: Sequence[str] | None = None, force: bool = False,
                options: dict[str, dict] | None = None, examples: int = 256, batch_size: int = 128,
                device: str = "auto", log=print) -> dict[str, dict]:
    """Run the analyzers ``only`` (all when None) on a run directory; return name -> result.

    ``options``: per analyzer, keyword overrides of its options, e.g.
    ``{"hessian": {"top_k": 5}, "ntk": {"blocks": 8}}``."""
    from vitsam.train.checkpoint import load_run
    from vitsam.train.distributed import pick_device

    names = list(ANALYZERS) if not only else list(only)
    options = options or {}
    for name in list(names) + list(options):
        if name not in ANALYZERS:
            raise unknown_choice("analyzer", name, ANALYZERS)
    analyzers = {name: configure(name, options.get(name)) for name in names}
    out_dir = Path(run_dir) / "analysis"
    results, todo = {}, []
    for name in names:
        path = out_dir / f"{name}.json"
        if path.exists() and not force:
            results[name] = json.loads(path.read_text())
        else:
            todo.append(name)
    if not todo:
        return results

    run = load_run(run_dir)
    device = pick_device(device)
    model = run.model.to(device)
    batches = training_batches(run.config, examples, batch_size, device)
    for name in todo:
        start = time.perf_counter()
        result = analyzers[name].run(model, batches)
        seconds = time.perf_counter() - start
        extra = {"analyzer": name, "options": dataclasses.asdict(analyzers[name]), "step": run.step,
                 "seconds": round(seconds, 2)}
        results[name] = save_result(result, name, out_dir, extra)
        log(f"[analyze] {run_dir}: {name} in {seconds:.1f}s")
    return results


def interpolation_between(run_a: str | Path, run_b: str | Path, points: int = 11,
                          examples: int = 256, batch_size: int = 128, device: str = "auto") -> dict:
    """Training loss and error along (1 - t) w_a + t w_b, t in [0, 1], for two runs of the
    same architecture (e.g. vanilla and SAM), on run a's training batches. No
    extrapolation: BatchNorm running variances would turn negative outside [0, 1]."""
    from vitsam.analysis.landscape import interpolate
    from vitsam.train.checkpoint import load_run
    from vitsam.train.distributed import pick_device

    a, b = load_run(run_a), load_run(run_b)
    if a.model.state_dict().keys() != b.model.state_dict().keys():
        raise VitsamError(f"cannot interpolate between {str(run_a)!r} and {str(run_b)!r}: "
                          "their models have different architectures")
    device = pick_device(device)
    model = a.model.to(device)
    batches = training_batches(a.config, examples, batch_size, device)
    ts = torch.linspace(0.0, 1.0, points).tolist()
    losses, errors = interpolate(model, model.state_dict(), b.model.to(device).state_dict(), batches, ts)
    return {"t": ts, "loss": losses, "error": errors}


# --------------------------------------------------------------------------- CLI

def cmd_analyze(args) -> None:
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    options: dict[str, dict] = {}
    for text in args.set or []:
        key, sep, value = text.partition("=")
        name, dot, option = key.partition(".")
        if not (sep and dot):
            raise VitsamError(f"--set {text!r} must look like ANALYZER.OPTION=VALUE, e.g. hessian.top_k=5")
        options.setdefault(name, {})[option] = value
    results = analyze_run(args.run_dir, only, args.force, options, args.examples, args.batch_size,
                          args.device)
    for name, record in results.items():
        print(f"{name}: {summary_line(record)}")


def summary_line(record: dict) -> str:
    """The headline number of a result, for the terminal."""
    name = record.get("analyzer")
    if "skipped" in record:
        return f"skipped ({record['skipped']})"
    if name == "hessian":
        blocks = record.get("blocks", {}).get("lambda_max", {})
        return (f"lambda_max {record['lambda_max']:.4g}, trace {record['trace']:.4g}; per block: "
                + ", ".join(f"{k} {v:.4g}" for k, v in blocks.items()))
    if name == "ntk":
        kappas = {k: record[k]["kappa"] for k in ("sum", "full") if k in record}
        return ", ".join(f"kappa[{k}] " + ("inf" if v is None else f"{v:.4g}") for k, v in kappas.items())
    if name == "sparsity":
        return ", ".join(f"{k} {[round(100 * v, 1) for v in vs]}%" for k, vs in record["per_block"].items())
    return f"written to analysis/{name}.json"


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="loss geometry of a run: Hessian, NTK, landscape, sparsity, attention",
        description="Run the geometry analyzers on a run's latest weights; results and figures go to "
                    "RUN_DIR/analysis/. Finished analyzers are skipped unless --force.")
    p.add_argument("run_dir")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(ANALYZERS)}")
    p.add_argument("--force", action="store_true", help="redo analyzers whose results exist")
    p.add_argument("--set", action="append", metavar="ANALYZER.OPTION=VALUE",
                   help="an analyzer option, e.g. --set hessian.top_k=5 (repeatable)")
    p.add_argument("--examples", type=int, default=256, help="training images loaded (default 256)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_analyze)
