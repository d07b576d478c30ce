"""Model weights as safetensors files, and loading another model's weights with the
changes transfer needs.

    save_weights(model, "model.safetensors")        # weights only: no pickle, no optimizer
    load_weights(model, "model.safetensors")        # every key and shape must match
    load_adapted(model, state, source)              # a resized position embedding, a new head

Run directories in and out of other layouts (the authors' .npz): ``vitsam.train.interop``;
starting a run from other weights: ``vitsam.train.transfer``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from vitsam.errors import VitsamError

WEIGHTS = "model.safetensors"


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


def load_adapted(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """``model.load_state_dict(state)``, except for a resized position embedding and a
    left-out head of another class count; returns one note per such change (any other
    difference raises, naming the tensor and both shapes)."""
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
