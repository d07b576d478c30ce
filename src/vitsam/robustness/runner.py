"""``vitsam robust RUN_DIR``: every robustness evaluation of a run, saved in the run.

Results go to ``RUN_DIR/robustness/``: ``corruptions.json`` (on-the-fly corrupted
test set), ``pgd_linf.json`` / ``pgd_l2.json``, ``<layout>.json`` for stored corrupted
sets (imagenet-c, cifar-c, mnist-c) and ``shift_<kind>.json`` for shifted test sets.
A result computed with the same settings is reused unless ``force``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

import torch

from vitsam.data import Loader, load_source
from vitsam.errors import VitsamError
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, SEVERITIES, check_names
from vitsam.robustness.evaluate import (LAYOUTS, corrupted_sets, evaluate_corrupted_sets, evaluate_corruptions,
                                        evaluate_pgd)
from vitsam.robustness.shifted import evaluate_shift, parse_shift
from vitsam.train.checkpoint import atomic_write_json, load_run

# PGD radii in [0, 1] pixel units: ImageNet's usual 1/255, 2/255, 4/255 and one larger
DEFAULT_PGD_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
# Test images per evaluation by default (vit_tiny on Fashion-MNIST, 1 loaded CPU core:
# about 2.5 min corrupted + 1 min PGD per run).
CORRUPTION_IMAGES = 1000
PGD_IMAGES = 500
# What `vitsam demo` should pass as max_images: 19 x 5 corrupted copies and PGD-10 at
# 4 radii of 200 test images take 30-55 s per tiny model (measured on the shared
# 2-core CPU, 1 torch thread, load ~6: benchmarks/bench_corruptions.py), about 4 min
# for the six demo runs, less on an idle machine.
DEMO_MAX_IMAGES = 200
RESULTS_DIR = "robustness"


def results_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_DIR


def read_result(run_dir: str | Path, name: str) -> dict | None:
    path = results_dir(run_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cached(run_dir: Path, name: str, settings: dict, force: bool, compute) -> dict:
    """Reuse RUN_DIR/robustness/<name>.json when it was made with the same settings."""
    previous = read_result(run_dir, name)
    if previous is not None and not force and previous.get("settings") == settings:
        return previous
    result = {**compute(), "settings": settings}
    atomic_write_json(result, results_dir(run_dir) / f"{name}.json")
    return result


def test_loader(run, max_images: int | None, batch_size: int) -> Loader:
    """The run's test set with its eval transform, cut to ``max_images`` evenly spaced images."""
    data = run.config.data
    source = load_source(data.dataset, "test", data.data_dir or None)
    if max_images is not None and len(source) > max_images:
        source = source.select(torch.linspace(0, len(source) - 1, max_images).round().long())
    return Loader(source, min(batch_size, len(source)), train=False, img_size=data.img_size,
                  eval_crop_fraction=data.eval_crop_fraction)


def run_robustness(run_dir: str | Path, corruptions: Iterable[str] | None = None,
                   pgd_eps: Iterable[float] = DEFAULT_PGD_EPS, shifts: Iterable[str] = (), force: bool = False,
                   max_images: int | None = None, *, severities: Iterable[int] = SEVERITIES,
                   params: str = "auto", pgd_norm: str = "linf", pgd_steps: int = 10,
                   layouts: Iterable[str] = (), baseline: str | Path | None = None,
                   batch_size: int = 250, device: str = "cpu", seed: int = 0) -> dict:
    """Run the robustness evaluations of a run directory and save them; returns
    {result name: result}.

    ``corruptions``: names (None = all 19, empty = skip); ``pgd_eps``: radii (empty =
    skip); ``shifts``: "kind:path" shifted test sets; ``layouts``: "layout:path" stored
    corrupted sets; ``max_images`` caps every evaluation (default 1000 test images for
    corruptions, 500 for PGD, all for stored and shifted sets); ``baseline``: a run
    directory whose corruption result normalises mCE."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, map_location=device)
    model = run.model
    names = list(ALL_CORRUPTIONS if corruptions is None else check_names(list(corruptions)))
    severities = list(severities)
    pgd_eps = [float(e) for e in pgd_eps]
    base = read_result(baseline, "corruptions") if baseline else None
    if baseline and base is None:
        raise VitsamError(f"baseline run {str(baseline)!r} has no robustness/corruptions.json: run "
                          f"`vitsam robust {baseline}` first")
    results = {}
    step = {"step": run.step}                 # a newer checkpoint invalidates old results
    if names:
        n = max_images or CORRUPTION_IMAGES
        settings = {**step, "names": names, "severities": severities, "params": params, "seed": seed, "images": n}
        results["corruptions"] = _cached(run_dir, "corruptions", settings, force, lambda: evaluate_corruptions(
            model, test_loader(run, n, batch_size), names, severities, params, seed, baseline=base))
    if pgd_eps:
        n = max_images or PGD_IMAGES
        settings = {**step, "eps": pgd_eps, "norm": pgd_norm, "steps": pgd_steps, "seed": seed, "images": n}
        results[f"pgd_{pgd_norm}"] = _cached(run_dir, f"pgd_{pgd_norm}", settings, force, lambda: evaluate_pgd(
            model, test_loader(run, n, batch_size), pgd_eps, pgd_norm, pgd_steps, seed=seed))
    for text in layouts:
        layout, _, path = text.partition(":")
        if layout not in LAYOUTS or not path:
            raise VitsamError(f"stored corrupted set {text!r} must be layout:path with layout one of "
                              f"{', '.join(LAYOUTS)}")
        settings = {**step, "path": path, "names": names, "severities": severities, "images": max_images}
        results[layout] = _cached(run_dir, layout, settings, force, lambda: evaluate_corrupted_sets(
            model, corrupted_sets(layout, path, run.config.data.img_size, names or None, severities, batch_size,
                                  max_images), layout, base))
    for text in shifts:
        kind, path = parse_shift(text)
        settings = {**step, "path": str(path), "images": max_images}
        results[f"shift_{kind}"] = _cached(run_dir, f"shift_{kind}", settings, force, lambda: evaluate_shift(
            model, kind, path, run.config.data.img_size, _class_wnids(run, kind), batch_size,
            run.config.data.eval_crop_fraction, max_images))
    return results


def _class_wnids(run, kind: str):
    """The model's classes in logit order, for the 200-class masks of ImageNet-R / -A:
    the class names of the run's training data (sorted wnid folders for ImageNet)."""
    if kind not in ("imagenet-r", "imagenet-a"):
        return None
    data = run.config.data
    return load_source(data.dataset, "train", data.data_dir or None).classes


# --------------------------------------------------------------------------- CLI

def _floats(text: str) -> list[float]:
    """'0.5/255,1/255,0.01' -> floats; fractions allowed."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        num, _, den = part.partition("/")
        try:
            values.append(float(num) / (float(den) if den else 1.0))
        except (ValueError, ZeroDivisionError):
            raise VitsamError(f"--pgd: cannot read {part!r} as a radius (e.g. 1/255,2/255,0.03)") from None
    return values


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Define ``vitsam robust``; the command function is ``args.func(args) -> int``."""
    parser = subparsers.add_parser(
        "robust", help="corrupted, adversarial and shifted-test-set accuracy of a run",
        description="Evaluate a run on corrupted test images (ImageNet-C style, made on the fly or stored), "
                    "under PGD attacks, and on shifted test sets; results go to RUN_DIR/robustness/.")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--corruptions", nargs="*", default=None, metavar="NAME",
                        help="corruptions to apply (default: all 19; give none to skip)")
    parser.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities (default 1..5)")
    parser.add_argument("--params", default="auto", choices=("auto", "imagenet", "cifar"),
                        help="corruption parameters: ImageNet-C, CIFAR-10-C, or by image size (default)")
    parser.add_argument("--pgd", default=",".join(f"{round(e * 255)}/255" for e in DEFAULT_PGD_EPS),
                        metavar="EPS,...", help="PGD radii in [0, 1] pixel units, fractions allowed "
                                                "(default %(default)s; empty to skip)")
    parser.add_argument("--pgd-norm", default="linf", choices=("linf", "l2"))
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--shift", action="append", default=[], metavar="KIND:PATH",
                        help="shifted test set: imagenet-r, imagenet-a, imagenet-v2 or real, with its path")
    parser.add_argument("--corrupted-set", action="append", default=[], metavar="LAYOUT:PATH",
                        help="stored corrupted test set: imagenet-c, cifar-c or mnist-c, with its path")
    parser.add_argument("--baseline", default=None, metavar="RUN_DIR", help="run whose corruption errors normalise mCE")
    parser.add_argument("--max-images", type=int, default=None,
                        help=f"images per evaluation (default {CORRUPTION_IMAGES} corrupted, {PGD_IMAGES} PGD)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="recompute results that already exist")
    parser.set_defaults(func=robust_command)
    return parser


def robust_command(args) -> int:
    try:
        severities = [int(s) for s in args.severities.split(",") if s.strip()]
    except ValueError:
        raise VitsamError(f"--severities must be integers 1..5 separated by commas, got {args.severities!r}") from None
    results = run_robustness(args.run_dir, args.corruptions, _floats(args.pgd), args.shift, args.force,
                             args.max_images, severities=severities, params=args.params, pgd_norm=args.pgd_norm,
                             pgd_steps=args.pgd_steps, layouts=args.corrupted_set, baseline=args.baseline,
                             batch_size=args.batch_size, device=args.device)
    print(format_results(results))
    return 0


def format_results(results: dict) -> str:
    """A compact plain-text summary of run_robustness's results."""
    lines = []
    for name, result in results.items():
        if result["kind"] == "corruptions":
            clean = result.get("clean_accuracy")
            head = f"{name}: mean corrupted accuracy {result['mean_accuracy']:.4f}"
            head += f" (clean {clean:.4f})" if clean is not None else ""
            for key in ("mce_alexnet", "mce_baseline"):
                if result.get(key, {}).get("mce") is not None:
                    head += f", {key.replace('_', ' vs ')} {result[key]['mce']:.3f}"
            lines.append(head + f", {result['num_images']} images")
            width = max(len(c) for c in result["per_corruption"])
            severities = list(result["per_severity"])
            lines.append(f"  {'corruption':<{width}}  " + "  ".join(f"s{s:<5}" for s in severities) + "  mean")
            for corruption, accs in result["accuracy"].items():
                cells = "  ".join(f"{accs[s]:.4f}" if s in accs else "   -  " for s in severities)
                lines.append(f"  {corruption:<{width}}  {cells}  {result['per_corruption'][corruption]:.4f}")
        elif result["kind"] == "pgd":
            cells = ", ".join(f"eps {e}: {a:.4f}" for e, a in result["accuracy"].items())
            lines.append(f"{name} ({result['steps']} steps, {result['num_images']} images): clean "
                         f"{result['clean_accuracy']:.4f}, {cells}")
        else:
            lines.append(f"{name}: accuracy {result['accuracy']:.4f} on {result['num_images']} images")
    return "\n".join(lines)


__all__ = ["run_robustness", "add_cli", "robust_command", "format_results", "DEFAULT_PGD_EPS", "DEMO_MAX_IMAGES"]
