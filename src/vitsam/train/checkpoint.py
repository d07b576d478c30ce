"""Run directories and checkpoints.

A run directory is the unit a user hands around (DESIGN.md)::

    RUN_DIR/
      config.json          the full resolved Config
      model.json           create_model arguments (name, num_classes, img_size, in_chans, overrides)
      metrics.jsonl        one JSON object per logged step / eval
      checkpoints/last.pt  weights + base-optimizer/SAM state + scheduler + RNG + data position
      eval.json            final evaluation
      analysis/, robustness/   results of later analyzers

Checkpoints are written to a temporary file and renamed, so a crash never leaves a
half-written ``last.pt``; they hold only tensors and plain containers and are read
with ``torch.load(weights_only=True)`` (never unpickle what a user hands us).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitsam import config as config_lib
from vitsam.errors import VitsamError

CHECKPOINT = Path("checkpoints") / "last.pt"


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise VitsamError(f"no checkpoint at {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it, do not dump a traceback
        raise VitsamError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})") from None


@dataclass
class LoadedRun:
    run_dir: Path
    config: config_lib.Config
    model: nn.Module
    step: int


def model_args(run_dir: Path) -> dict:
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise VitsamError(f"{str(run_dir)!r} is not a vitsam run directory (no model.json)")
    return json.loads(path.read_text())


def load_run(run_dir: str | Path, map_location="cpu") -> LoadedRun:
    """Rebuild the model of a run from its directory alone, with its latest weights, in eval mode."""
    from vitsam.models import create_model

    run_dir = Path(run_dir)
    args = model_args(run_dir)
    cfg = config_lib.load(run_dir / "config.json")
    model = create_model(args["name"], num_classes=args["num_classes"], img_size=args["img_size"],
                         in_chans=args["in_chans"], **args.get("overrides", {}))
    state = load_checkpoint(run_dir / CHECKPOINT, map_location)
    model.load_state_dict(state["model"])
    return LoadedRun(run_dir, cfg, model.eval().to(map_location), int(state["step"]))
