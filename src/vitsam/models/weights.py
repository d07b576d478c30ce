"""Weights in and out: safetensors files, the authors' .npz, run directories.

    save_weights(model, "model.safetensors")        # weights only: no pickle, no optimizer
    load_weights(model, "model.safetensors")
    load_pretrained(model, "runs/pretrained")       # transfer: new head, resized position embeddings
    import_run("ViT-B_16.npz", "vit_b16", "runs/vit_b16_sam", dataset="folder:/data/imagenet")
    export_run("runs/vit_b16_sam", "npz")           # -> runs/vit_b16_sam/model.npz

An imported run directory holds what ``eval``, ``analyze`` and ``robust`` read:
``config.json`` (the model's paper preset, ``<model>_imagenet``, with the data and model
settings of the import), ``model.json`` (create_model's arguments) and
``model.safetensors``, plus ``import.json`` (source file, its sha256, the notes).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from vitsam.errors import VitsamError, unknown_choice
from vitsam.jsonfile import write_json

WEIGHTS = "model.safetensors"
FORMATS = ("safetensors", "npz")


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """The model's state dict as a safetensors file (written to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "model": type(model).__name__})
    tmp.replace(path)
    return path


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file into ``model``; every key and shape must match."""
    path = Path(path)
    tensors = read_safetensors(path)
    expected = model.state_dict()
    _check_names(expected, tensors, repr(str(path)), type(model).__name__)
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise VitsamError(f"{str(path)!r}: tensor {key!r} has shape {tuple(tensors[key].shape)}, this "
                              f"{type(model).__name__} expects {tuple(value.shape)}")
    model.load_state_dict(tensors)
    return model


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise VitsamError(f"no weights file at {str(path)!r}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise VitsamError(f"{str(path)!r} is not a readable safetensors file ({err})") from None


def _check_names(expected: dict, found: dict, source: str, model_name: str) -> None:
    for key, value in expected.items():
        if key not in found:
            raise VitsamError(f"{source} has no tensor {key!r} (expected shape {tuple(value.shape)} for this "
                              f"{model_name})")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise VitsamError(f"{source} has {len(extra)} tensor(s) this {model_name} does not, e.g. {extra[0]!r}")


def load_pretrained(model: nn.Module, source: str | Path) -> list[str]:
    """Start ``model`` from other weights (transfer, fine-tuning): a run directory, a
    ``.safetensors`` file or the authors' ``.npz``. Position embeddings of another patch
    grid are resized (``resize_pos_embed``) and a head of another class count is left at
    its initialization; returns a note for each. Any other difference raises, naming the
    tensor and both shapes."""
    from vitsam.models.npz import load_authors, read_npz

    path = Path(source)
    if path.suffix == ".npz":
        return load_authors(model, read_npz(path), source=repr(str(path)))
    if path.is_dir():
        from vitsam.train.checkpoint import load_run

        state = load_run(path).model.state_dict()
    else:
        state = read_safetensors(path)
    return load_adapted(model, state, repr(str(path)))


def load_adapted(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """``model.load_state_dict(state)``, except for a resized position embedding and a
    left-out head of another class count (see ``load_pretrained``)."""
    from vitsam.models.vit import resize_pos_embed

    own = model.state_dict()
    _check_names(own, state, source, type(model).__name__)
    head = {name for name, p in model.named_parameters() if any(p is q for q in model.head.parameters())}
    merged, notes = dict(own), []
    for key, value in state.items():
        if value.shape == own[key].shape:
            merged[key] = value
        elif key in head and value.shape[1:] == own[key].shape[1:]:
            notes.append(f"{key} of {value.shape[0]} classes left out; the new head has {own[key].shape[0]}")
        elif key.endswith("pos_embed") and value.shape[-1] == own[key].shape[-1]:
            prefix = getattr(model, "num_prefix_tokens", 1)
            old, side = (math.isqrt(n - prefix) for n in (value.shape[1], own[key].shape[1]))
            merged[key] = resize_pos_embed(value, side, prefix)
            notes.append(f"{key} resized from a {old}x{old} to a {side}x{side} patch grid (bicubic; class "
                         f"token kept)")
        else:
            raise VitsamError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, this "
                              f"{type(model).__name__} expects {tuple(own[key].shape)}")
    model.load_state_dict(merged)
    return notes


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
    from vitsam import config as config_lib
    from vitsam.models.npz import import_npz
    from vitsam.presets import get_preset

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
    from vitsam.models.npz import save_npz
    from vitsam.train.checkpoint import load_run

    if fmt not in FORMATS:
        raise unknown_choice("export format", fmt, FORMATS)
    run = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / f"model.{fmt}"
    return save_weights(run.model, out) if fmt == "safetensors" else save_npz(run.model, out)


# --------------------------------------------------------------------------- command line

def cmd_import(args) -> None:
    from vitsam.config import parse_override

    overrides = {}
    for text in args.set or []:
        overrides.update(parse_override(text))
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
