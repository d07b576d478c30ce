"""Run directories and checkpoints.

A run directory is the unit a user hands around (DESIGN.md)::

    RUN_DIR/
      config.json          the full resolved Config
      model.json           create_model arguments (name, num_classes, img_size, in_chans, overrides)
      metrics.jsonl        one JSON object per logged step / eval
      checkpoints/last.pt  weights + objective + base-optimizer/SAM state + scheduler + every
                           rank's RNG + step
      eval.json            final evaluation (accuracy per split, throughput, parameters)
      predictions.npz      per-image predictions and labels of every split (paired comparisons)
      model.safetensors    the final weights alone (no pickle), for export and import
      results/             what evaluators measured later (analyses, robustness)

Checkpoints are written to a temporary file and renamed, so a crash never leaves a
half-written ``last.pt``, and a checkpoint with non-finite weights is never written over
a good one; they hold only tensors and plain containers and are read with
``torch.load(weights_only=True)`` (never unpickle what a user hands us).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitsam import config as config_lib
from vitsam.errors import VitsamError
from vitsam.jsonfile import write_json

CHECKPOINT = Path("checkpoints") / "last.pt"
PREDICTIONS = Path("predictions.npz")
WEIGHTS = Path("model.safetensors")
atomic_write_json = write_json   # every JSON file of a run is strict and written atomically


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a training checkpoint atomically; refuse (and keep the previous file) when
    the weights are not finite: a diverged run must not overwrite its last good state."""
    bad = [name for name, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise VitsamError(f"step {state['step']}: the weights are not finite ({', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}); {str(path)!r} keeps the last good checkpoint")
    atomic_torch_save(state, path)


def write_evaluation(run_dir: Path, summary: dict, predictions: dict[str, np.ndarray]) -> None:
    """eval.json (merged into what is there) and predictions.npz: the per-image
    predictions and labels as a plain .npz (read back with allow_pickle=False)."""
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    tmp = run_dir / (PREDICTIONS.name + ".tmp.npz")
    np.savez_compressed(tmp, **predictions)
    tmp.replace(run_dir / PREDICTIONS)
    write_json({**previous, **summary}, path)


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise VitsamError(f"{str(run_dir)!r} has no {PREDICTIONS} (runs trained before it was written: "
                          f"re-run `vitsam eval {run_dir}`)")
    with np.load(path, allow_pickle=False) as data:
        return dict(data)


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


def model_arguments(cfg: config_lib.Config, source) -> dict:
    """What ``build_model`` needs to rebuild a run's model (saved as model.json)."""
    overrides = dict(cfg.model.overrides)
    for key in ("drop_rate", "drop_path_rate"):
        if getattr(cfg.model, key):
            overrides[key] = getattr(cfg.model, key)
    return {"name": cfg.model.name, "num_classes": source.num_classes, "img_size": cfg.data.img_size,
            "in_chans": source.in_chans, "overrides": overrides}


def build_model(args: dict) -> nn.Module:
    """The one way to build a run's model from its model.json arguments."""
    from vitsam.models import create_model

    return create_model(args["name"], num_classes=args["num_classes"], img_size=args["img_size"],
                        in_chans=args["in_chans"], **args.get("overrides", {}))


def model_args(run_dir: Path) -> dict:
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise VitsamError(f"{str(run_dir)!r} is not a vitsam run directory (no model.json)")
    return json.loads(path.read_text())


def load_run(run_dir: str | Path, map_location="cpu") -> LoadedRun:
    """Rebuild the model of a run from its directory alone, with its latest weights
    (the training checkpoint, else model.safetensors of an imported run), in eval mode."""
    run_dir = Path(run_dir)
    args = model_args(run_dir)
    cfg = config_lib.load(run_dir / "config.json")
    model = build_model(args)
    if (run_dir / CHECKPOINT).is_file() or not (run_dir / WEIGHTS).is_file():
        state = load_checkpoint(run_dir / CHECKPOINT, map_location)
        model.load_state_dict(state["model"])
        step = int(state["step"])
    else:
        from vitsam.models.weights import load_weights

        load_weights(model, run_dir / WEIGHTS)
        step = 0
    return LoadedRun(run_dir, cfg, model.eval().to(map_location), step)
