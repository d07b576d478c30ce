"""Run directories in and out of other layouts: the authors' ``.npz`` checkpoints
(google-research/vision_transformer) become runs, runs become safetensors or ``.npz``
files; ``vitsam import`` and ``vitsam export``.

    import_run("ViT-B_16.npz", "vit_b16", "runs/vit_b16_sam", dataset="folder:/data/imagenet")
    export_run("runs/vit_b16_sam", "npz")           # -> runs/vit_b16_sam/model.npz

An imported run directory holds what ``eval``, ``analyze`` and ``robust`` read:
``config.json`` (the model's paper preset, ``<model>_imagenet``, with the data and model
settings of the import), ``model.json`` (create_model's arguments) and
``model.safetensors``, plus ``import.json`` (source file, its sha256, the notes).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from vitsam import config as config_lib
from vitsam.errors import VitsamError, unknown_choice
from vitsam.jsonfile import write_json
from vitsam.models.npz import import_npz, save_npz
from vitsam.models.weights import WEIGHTS, save_weights
from vitsam.presets import get_preset
from vitsam.train.checkpoint import load_run

FORMATS = ("safetensors", "npz")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_run(npz_path: str | Path, model_name: str, out: str | Path, img_size: int | None = None,
               num_classes: int | None = None, dataset: str | None = None, preset: str | None = None,
               **overrides) -> tuple[Path, list[str]]:
    """Write a run directory for the authors' checkpoint ``npz_path``; returns it and the notes."""
    out = Path(out)
    if (out / "model.json").exists():
        raise VitsamError(f"{str(out)!r} is already a run directory; choose another --out")
    cfg = get_preset(preset or f"{model_name}_imagenet")
    model, args, notes = import_npz(npz_path, model_name, num_classes=num_classes, img_size=img_size,
                                    **overrides)
    cfg.model.name, cfg.model.overrides = model_name, dict(args["overrides"])
    cfg.data.img_size = args["img_size"]
    if dataset:
        cfg.data.dataset = dataset
    cfg.name = f"import {Path(npz_path).name}"
    config_lib.validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, out / "config.json")
    write_json(args, out / "model.json")
    save_weights(model, out / WEIGHTS)
    write_json({"source": str(npz_path), "sha256": _sha256(Path(npz_path)), "notes": notes},
                out / "import.json")
    return out, notes


def export_run(run_dir: str | Path, fmt: str = "safetensors", out: str | Path | None = None) -> Path:
    """A run's latest weights as ``model.safetensors`` or in the authors' ``.npz`` layout."""
    if fmt not in FORMATS:
        raise unknown_choice("export format", fmt, FORMATS)
    run = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / f"model.{fmt}"
    return save_weights(run.model, out) if fmt == "safetensors" else save_npz(run.model, out)


# --------------------------------------------------------------------------- command line

def cmd_import(args) -> None:
    overrides = {}
    for text in args.set or []:
        overrides.update(config_lib.parse_override(text))
    out, notes = import_run(args.path, args.model, args.out, img_size=args.img_size,
                            num_classes=args.num_classes, dataset=args.dataset, preset=args.preset,
                            **overrides)
    for note in notes:
        print(f"note: {note}")
    print(f"{out}: imported {args.path} as {args.model}")


def cmd_export(args) -> None:
    path = export_run(args.run_dir, args.format, args.out)
    print(f"{path}: {args.format} weights of {args.run_dir}")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="make a run directory from the authors' .npz checkpoint (ViT, Mixer)",
        description="Load a checkpoint in the layout of google-research/vision_transformer (the paper's "
                    "released weights) into a vitsam model and write a run directory that eval, analyze "
                    "and robust accept. Position embeddings are resized to --img-size; a head of another "
                    "class count is left out.")
    p.add_argument("path", help="the .npz file")
    p.add_argument("--model", required=True, help="a name from `vitsam models`, e.g. vit_b16, mixer_b16")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--img-size", type=int, help="input size (default: the preset's, 224)")
    p.add_argument("--num-classes", type=int, help="classes of a new head (default: the file's head)")
    p.add_argument("--dataset", help="data.dataset of the run, e.g. folder:/data/imagenet")
    p.add_argument("--preset", help="the config to start from (default: <model>_imagenet)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a model keyword, e.g. --set gelu=exact (repeatable)")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("export", help="write a run's weights as safetensors or the authors' .npz")
    p.add_argument("run_dir")
    p.add_argument("--format", default="safetensors", choices=FORMATS)
    p.add_argument("--out", help="the file to write (default: RUN_DIR/model.<format>)")
    p.set_defaults(func=cmd_export)
