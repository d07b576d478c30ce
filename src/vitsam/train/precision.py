"""Mixed precision: bf16 autocast, or fp16 autocast with dynamic loss scaling.

bf16 has fp32's exponent range, so plain autocast is enough. fp16 overflows above 65504
and flushes small gradients to zero, so the loss is multiplied by a scale before
backward and the gradients divided by it afterwards (Micikevicius et al. 2018).

Why not ``torch.amp.GradScaler``: its protocol (one ``unscale_`` per optimizer step,
then ``step``, then ``update`` reading the infs ``unscale_`` recorded) assumes one
backward per step. SAM takes two gradients per step; both must be unscaled before their
norms are taken, and an overflow in either pass must skip the whole update, with every
DDP rank agreeing before the ascent (docs/paper.md, SAM pitfall 6). ``LossScaler`` keeps GradScaler's rule, defaults and state_dict keys;
the closure in ``vitsam.train.step`` unscales and checks each pass.
"""
from __future__ import annotations

import torch

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class GradientOverflow(Exception):
    """A pass produced inf / nan gradients: the optimizer step is skipped."""


class LossScaler:
    """Dynamic loss scale: halve it on an overflow, double it after ``growth_interval``
    steps in a row without one (GradScaler's rule and defaults)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.scale = init_scale
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.steps_without_overflow = 0

    @torch.no_grad()
    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide gradients by the scale in place (exact: the scale is a power of 2)."""
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflow: bool) -> None:
        if overflow:
            self.scale *= self.backoff_factor
            self.steps_without_overflow = 0
            return
        self.steps_without_overflow += 1
        if self.steps_without_overflow == self.growth_interval:
            self.scale *= self.growth_factor
            self.steps_without_overflow = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self.steps_without_overflow}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.growth_factor = float(state["scale"]), float(state["growth_factor"])
        self.backoff_factor, self.growth_interval = float(state["backoff_factor"]), int(state["growth_interval"])
        self.steps_without_overflow = int(state["_growth_tracker"])


def loss_scaler(precision: str) -> LossScaler | None:
    """A scaler for fp16 training, None otherwise."""
    return LossScaler() if precision == "fp16" else None
