"""One training step: the same code path for a base optimizer and the SAM family.

``train_step`` builds a closure (zero grads, forward, loss, backward, clip) and hands it
to ``optimizer.step``: a torch optimizer calls it once, SAM twice (at w, then at w + e),
LookSAM once or twice. What keeps the passes consistent lives in the closure
(PAPER.md, "What the public SAM implementations get wrong"):

- point 5: the RNG state is saved on the first call and restored on every later call,
  so dropout / drop-path draw the same masks in both passes (mixup is drawn before);
- point 4: later calls run with BatchNorm running statistics frozen: BN still normalizes
  with the batch statistics, but only the first pass updates the running averages;
- point 6: the gradient is clipped inside the closure, so the final (second-pass) gradient
  is the one clipped. Clipping the first pass too is harmless: a uniform rescale of g
  leaves g / ||g|| (and ASAM's T^2 g / ||T g||) unchanged;
- point 3: under DDP (a model with ``no_sync``) the SAM ascent pass runs without gradient
  synchronization, so each rank perturbs by its own gradient (m-sharpness); the optimizer
  says when through its ``local_gradient_pass`` flag.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class StepResult:
    loss: float            # first-pass loss (at the unperturbed weights)
    logits: torch.Tensor   # first-pass logits, detached
    grad_norm: float       # global norm of the final gradient, before clipping


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode keep normalizing with batch statistics but update
    neither running_mean / running_var nor num_batches_tracked (PAPER point 4)."""
    tracking = [m for m in model.modules()
                if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for module in tracking:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in tracking:
            module.track_running_stats = True


class _RngState:
    """The CPU generator, and the CUDA generator of ``device`` when it is a GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _StepClosure:
    """Forward + backward + clip, recording the first pass's loss and logits and the last
    pass's gradient norm."""

    def __init__(self, model, optimizer, loss_fn, images, targets, grad_clip, autocast_dtype):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.images, self.targets = images, targets
        self.grad_clip, self.autocast_dtype = grad_clip, autocast_dtype
        self.calls = 0
        self.rng: _RngState | None = None
        self.loss = self.logits = self.grad_norm = None

    def __call__(self) -> torch.Tensor:
        if self.calls == 0:
            self.rng = _RngState(self.images.device)
        else:
            self.rng.restore()  # the same dropout masks as the first pass (point 5)
        frozen_bn = frozen_batchnorm_stats(self.model) if self.calls else contextlib.nullcontext()
        with frozen_bn, self._gradient_sync():
            self.model.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.model(self.images)
                loss = self.loss_fn(logits, self.targets)
            loss.backward()
        self.grad_norm = self._clip_gradients()
        if self.calls == 0:
            self.loss, self.logits = loss.detach(), logits.detach()
        self.calls += 1
        return loss

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.images.device.type, dtype=self.autocast_dtype)

    def _gradient_sync(self):
        """No DDP all-reduce during the SAM ascent pass (point 3)."""
        if getattr(self.optimizer, "local_gradient_pass", False) and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _clip_gradients(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        return norm


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               images: torch.Tensor, targets: torch.Tensor, *,
               grad_clip: float = 0.0, autocast_dtype: torch.dtype | None = None) -> StepResult:
    """One optimizer step on one batch; ``model`` must be in train mode.

    images: (B, C, H, W); targets: whatever ``loss_fn(logits, targets)`` takes (class
    indices, or soft labels after mixup). ``grad_clip`` > 0 clips the global gradient norm.
    """
    closure = _StepClosure(model, optimizer, loss_fn, images, targets, grad_clip, autocast_dtype)
    optimizer.step(closure)
    return StepResult(loss=closure.loss.item(), logits=closure.logits,
                      grad_norm=closure.grad_norm.item())
