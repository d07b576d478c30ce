"""vitsam: train ViT, MLP-Mixer and ResNet with and without Sharpness-Aware Minimization
and see what "When Vision Transformers Outperform ResNets without Pre-training or Strong
Data Augmentations" (Chen, Hsieh, Gong, ICLR 2022) saw: accuracy, loss geometry and
robustness, beside the paper's own numbers.

Start here:
  vitsam demo                               the main job: small models on Fashion-MNIST, report.html
  vitsam presets | vitsam models            what can be trained
  vitsam train --preset vit_tiny_fmnist_sam --out runs/vit_sam
  vitsam report runs/vit runs/vit_sam       tables and figures for any runs, claims with verdicts
  vitsam paper --list                       one command per table of the paper
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vitsam import __version__
from vitsam.errors import VitsamError


def cmd_train(args) -> None:
    from vitsam import presets
    from vitsam.report.build import describe_regime
    from vitsam.train.loop import train

    cfg = presets.resolve(args.preset, args.config, args.set or [], local=args.runlocal)
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"vitsam train: {describe_regime(cfg)}; config: {Path(args.out) / 'config.json'}", file=sys.stderr)
    run_dir = train(cfg, args.out, resume=args.resume)
    summary = run_dir / "eval.json"
    if summary.exists() and os.environ.get("RANK", "0") == "0":
        print(summary.read_text().strip())


def cmd_eval(args) -> None:
    from vitsam.data.build import eval_loader
    from vitsam.evaluators.accuracy import evaluate_splits
    from vitsam.train.checkpoint import load_run, write_evaluation
    from vitsam.train.distributed import pick_device

    run = load_run(args.run_dir)
    device = pick_device(args.device)
    cfg = run.config
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    splits = ["test"] + (["val"] if cfg.data.val_fraction > 0 else [])
    loaders = {split: eval_loader(cfg.data, split, cfg.train.eval_batch_size) for split in splits}
    summary, predictions = evaluate_splits(run.model.to(device), loaders, device, progress=True)
    write_evaluation(Path(args.run_dir), summary, predictions)
    for split in splits:
        print(f"{args.run_dir}: {split} accuracy {summary[f'{split}_accuracy']:.4f}, loss "
              f"{summary[f'{split}_loss']:.4f} ({summary[f'{split}_images']} images, step {run.step})")


def cmd_models(args) -> None:
    import torch

    from vitsam.models import create_model, list_models

    print(f"{'name':<14} {'family':<7} {'params':>9}  at")
    for name in list_models():
        small = name.endswith("_tiny")  # the small variants are sized for 28x28 grayscale, 10 classes
        kwargs = dict(num_classes=10, img_size=28, in_chans=1) if small else {}
        with torch.device("meta"):  # shapes only: counting 236M parameters costs nothing
            model = create_model(name, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        where = "28px, 1 channel, 10 classes" if small else "224px, 1000 classes"
        print(f"{name:<14} {model.family:<7} {params / 1e6:>8.2f}M  {where}")
    print("and timm/<name> for any timm model, when timm is installed (pip install vitsam[timm])")


def cmd_presets(args) -> None:
    from vitsam.presets import describe, list_presets

    for name in list_presets():
        print(f"{name:<26} {describe(name)}")


def cmd_demo(args) -> None:
    from vitsam.demo import run_demo

    report = run_demo(preset=args.preset, out=args.out, data_dir=args.data_dir, only=args.only,
                      device=args.device)
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitsam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vitsam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: small models on Fashion-MNIST with and without SAM, one report",
                       description="Train the small ViT, Mixer and ResNet with and without SAM in a data-limited "
                                   "regime, measure them and write OUT/report.html and OUT/claims.json. Finished "
                                   "runs and results are reused; interrupted runs resume.")
    p.add_argument("--preset", default="quick", help="quick (2-core CPU, ~11 min) or full (a GPU)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-dir")
    p.add_argument("--only", help="comma-separated subset of the runs, e.g. vit,vit_sam")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train one model (torchrun-aware)",
                       description="Train a preset, optionally changed by a config file and key=value overrides.")
    p.add_argument("--preset", required=True, help="a name from `vitsam presets`")
    p.add_argument("--config", help="a .toml or .json file with the same nested keys as the config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set sam.rho=0.1 (repeatable)")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--runlocal", action="store_true",
                   help="the same recipe at toy size (one block, 0.5%% of Fashion-MNIST, 2 steps): a first look")
    p.add_argument("--data-dir", help="where the data set lives (overrides data.data_dir)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's latest weights on its test (and validation) split")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=cmd_presets)

    from vitsam.evaluators.cli import add_cli as add_evaluator_cli
    from vitsam.evaluators.robustness import add_cli as add_robust_cli
    from vitsam.experiments.cli import add_cli as add_paper_cli
    from vitsam.train.interop import add_cli as add_weights_cli
    from vitsam.report.build import add_cli as add_report_cli

    add_evaluator_cli(sub)
    add_robust_cli(sub)
    add_report_cli(sub)
    add_paper_cli(sub)
    add_weights_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except VitsamError as err:
        print(f"vitsam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`vitsam models | head`): not an error; silence the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
