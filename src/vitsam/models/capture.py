"""Record attention maps, block outputs and MLP hidden activations without editing a model.

    with capture(model, attention=True, blocks=True, hidden=True) as rec:
        model(images)
    rec.attention  # per attention block: (B, heads, N, N) softmax probabilities
    rec.blocks     # per block in model.blocks: its output, (B, N, D) or (B, C, h, w)
    rec.hidden     # MLP name ("blocks.0.mlp", "blocks.3.token_mixing", ...) ->
                   # post-GELU hidden activations (B, ..., hidden)

Forward hooks sit on the ``AttentionProbe`` / ``ActivationProbe`` modules and on the
blocks, and are removed on exit. The recording holds the most recent ``model(x)``
call: each call clears it first. ``explicit_attention`` switches attention to the
explicit softmax path, which the probes can see and which supports double backward
(Hessian-vector products); fused SDPA kernels have neither.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from vitsam.models.base import ActivationProbe, AttentionProbe
from vitsam.models.layers import Attention


@dataclass
class Recording:
    attention: list[torch.Tensor] = field(default_factory=list)
    blocks: list[torch.Tensor] = field(default_factory=list)
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.attention.clear()
        self.blocks.clear()
        self.hidden.clear()


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Use the explicit softmax attention path inside the block; restores the previous
    setting on exit, so it nests with ``capture``."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    previous = [layer.explicit for layer in layers]
    for layer in layers:
        layer.explicit = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, previous):
            layer.explicit = flag


@contextmanager
def capture(model: nn.Module, attention: bool = False, blocks: bool = False,
            hidden: bool = False, detach: bool = True) -> Iterator[Recording]:
    """Record what was asked for during forward passes; ``detach=False`` keeps the graph."""
    rec = Recording()

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if detach else tensor

    def append_to(target: list):
        return lambda module, inputs, output: target.append(keep(output))

    def store_as(name: str):
        return lambda module, inputs, output: rec.hidden.__setitem__(name, keep(output))

    with ExitStack() as stack:
        hooks = [model.register_forward_pre_hook(lambda module, inputs: rec.clear())]
        if attention:
            stack.enter_context(explicit_attention(model))
            hooks += [m.register_forward_hook(append_to(rec.attention))
                      for m in model.modules() if isinstance(m, AttentionProbe)]
        if blocks:
            hooks += [b.register_forward_hook(append_to(rec.blocks)) for b in model.blocks]
        if hidden:
            hooks += [m.register_forward_hook(store_as(name.removesuffix(".probe")))
                      for name, m in model.named_modules() if isinstance(m, ActivationProbe)]
        for hook in hooks:
            stack.callback(hook.remove)
        yield rec
