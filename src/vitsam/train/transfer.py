"""Starting a run from another run's weights: transfer learning and fine-tuning
(``model.init_from``), linear probes (``train.trainable=head``).

``initialize_from(model, source)`` loads every weight of ``source`` that fits ``model``
(``vitsam.models.weights.load_adapted`` does the loading):

- a head of another class count is new (the model's own initialization: zero for
  vitsam's models), so a run can move to another data set;
- a ViT at another resolution or patch grid gets its position embeddings interpolated
  bicubically over the patch grid, the class token's row kept as it is
  (``vitsam.models.resize_pos_embed``; as the ViT paper's fine-tuning at higher
  resolution, Dosovitskiy et al. 2021, Sec. 3.2);
- an MLP-Mixer's token-mixing MLP is sized for its number of patches, so a Mixer
  transfers only at the same token count (a clear error otherwise);
- any other shape mismatch (channels, widths) is an error naming the tensor.

``source`` is a run directory (its latest weights, as ``load_run`` reads them), a
``.safetensors`` weights file, a training checkpoint file (``checkpoints/last.pt``, read
with ``weights_only=True``) or the authors' ``.npz``.

Call order in the training loop: after the model is built and before the objective and
the optimizer (a momentum encoder copies the initialized weights; the optimizer must see
which parameters are frozen); a resumed run skips it (its checkpoint wins).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitsam.errors import VitsamError
from vitsam.models.npz import load_authors, read_npz
from vitsam.models.weights import load_adapted, read_safetensors
from vitsam.train.checkpoint import load_checkpoint, load_run


def read_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict stored at ``source`` (a run directory, .safetensors or .pt file)."""
    path = Path(source)
    if path.is_dir():
        return load_run(path).model.state_dict()
    if path.suffix == ".pt" and path.is_file():
        state = load_checkpoint(path)
        if "model" not in state:
            raise VitsamError(f"model.init_from={str(source)!r} is not a vitsam training checkpoint (no 'model' entry)")
        return state["model"]
    if path.suffix == ".safetensors" and path.is_file():
        return read_safetensors(path)
    raise VitsamError(f"model.init_from={str(source)!r} is neither a run directory, a .safetensors or .npz file "
                      f"nor a .pt checkpoint")


def check_token_count(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """A Mixer's token-mixing weights are (hidden, tokens): another token count cannot load."""
    if getattr(model, "family", "") != "mixer":
        return
    own = model.state_dict()
    for name, tensor in state.items():
        if "token_mixing" in name and name in own and tensor.shape != own[name].shape:
            raise VitsamError(
                f"model.init_from={str(source)!r}: an MLP-Mixer's token-mixing MLP is sized for its number of "
                f"patches, so it transfers only at the same token count (the source's {name!r} has shape "
                f"{tuple(tensor.shape)}, this model {tuple(own[name].shape)}, for "
                f"{model.patch_embed.num_tokens} tokens); choose data.img_size so that (img_size / patch_size)^2 "
                f"equals the source's token count")


def load_into(model: nn.Module, source: str | Path, label: str | None = None) -> list[str]:
    """Load ``source``'s weights into ``model`` (rules in the module docstring); returns
    one note per tensor that was interpolated or left new. ``label`` names the source in
    errors (default: its path)."""
    path = Path(source)
    label = label or repr(str(path))
    if path.suffix == ".npz":
        return load_authors(model, read_npz(path), source=label)
    state = read_weights(path)
    check_token_count(model, state, source)
    return load_adapted(model, state, label)


def initialize_from(model: nn.Module, source: str | Path) -> str:
    """``model.init_from``: load ``source`` into ``model``; returns a one-line message
    saying what was loaded, interpolated and left new."""
    notes = load_into(model, source, f"model.init_from={str(source)!r}")
    return f"initialized from {source}" + (f" ({'; '.join(notes)})" if notes else " (every tensor as it was)")


# --------------------------------------------------------------------------- linear probe

def freeze_all_but_head(model: nn.Module) -> int:
    """A linear probe: every parameter outside the model's "head" parameter group stops
    taking gradients (the optimizer skips them), and the BatchNorm layers outside it
    always normalise with their running statistics, as a frozen backbone in eval mode
    does in MoCo v3's linear classification. Returns the number of trainable parameters."""
    head = {id(p) for p in model.parameter_groups()["head"]}
    for param in model.parameters():
        param.requires_grad_(id(param) in head)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(id(p) in head for p in module.parameters()):
            module.register_forward_pre_hook(_keep_eval)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _keep_eval(module: nn.Module, args) -> None:
    module.train(False)   # model.train() at each step must not switch a frozen BatchNorm back
