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
  says when through its ``local_gradient_pass`` flag;
- point 9: with ``accumulation_steps = k`` every pass runs over all k micro-batches, so
  the ascent uses the gradient of the whole batch, and so does the update; a synchronized
  pass all-reduces once, with its last micro-batch;
- point 6, fp16: each pass's gradient is unscaled before its norm is taken; an overflow in
  either pass (on any rank) raises ``GradientOverflow`` out of ``optimizer.step``, before
  the base optimizer's update (SAM puts w back first), and ``train_step`` reports the
  step as skipped.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitsam.errors import VitsamError
from vitsam.train.distributed import any_rank
from vitsam.train.precision import GradientOverflow, LossScaler


@dataclass
class StepResult:
    loss: float            # first-pass loss (at the unperturbed weights)
    logits: torch.Tensor   # first-pass logits, detached
    grad_norm: float       # global norm of the final gradient, before clipping
    skipped: bool = False  # fp16: a pass overflowed, the weights and optimizer are untouched


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
    """Forward + backward over the micro-batches, unscale, clip; records the first pass's
    loss and logits and the last pass's gradient norm."""

    def __init__(self, model, optimizer, loss_fn, images, targets, grad_clip, autocast_dtype,
                 scaler, accumulation_steps):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.images, self.targets = images, targets
        self.grad_clip, self.autocast_dtype = grad_clip, autocast_dtype
        self.scaler, self.accumulation_steps = scaler, accumulation_steps
        self.calls = 0
        self.rng: _RngState | None = None
        self.loss = self.logits = self.grad_norm = None

    def __call__(self) -> torch.Tensor:
        if self.calls == 0:
            self.rng = _RngState(self.images.device)
        else:
            self.rng.restore()  # the same dropout masks as the first pass (point 5)
        frozen_bn = frozen_batchnorm_stats(self.model) if self.calls else contextlib.nullcontext()
        local = getattr(self.optimizer, "local_gradient_pass", False)
        self.model.zero_grad(set_to_none=True)
        with frozen_bn:
            loss, logits = self._accumulate_gradients(local)
        if self.calls == 0:
            self.loss, self.logits = loss, logits
        self.calls += 1
        self._finish_gradients()
        return loss

    def _accumulate_gradients(self, local: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each micro-batch's mean loss weighted by its share of the batch, so the summed
        gradient is that of the whole batch's mean loss (point 9)."""
        # images (B, ...) -> k micro-batches of about B / k; targets alike
        micro_batches = list(zip(torch.tensor_split(self.images, self.accumulation_steps),
                                 torch.tensor_split(self.targets, self.accumulation_steps)))
        losses, logits = [], []
        for i, (images, targets) in enumerate(micro_batches):
            synchronize = not local and i == len(micro_batches) - 1
            with self._gradient_sync(synchronize):
                with self._autocast():
                    out = self.model(images)
                    loss = self.loss_fn(out, targets) * (len(images) / len(self.images))
                (loss if self.scaler is None else loss * self.scaler.scale).backward()
            losses.append(loss.detach())
            logits.append(out.detach())
        return torch.stack(losses).sum(), torch.cat(logits)  # loss: mean over B; logits (B, classes)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.images.device.type, dtype=self.autocast_dtype)

    def _gradient_sync(self, synchronize: bool):
        """DDP all-reduces only when asked: not in the SAM ascent pass (point 3), not before
        the last micro-batch."""
        if not synchronize and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _finish_gradients(self) -> None:
        """Unscale (fp16) before any norm, skip on an overflow on any rank, clip (point 6)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        if self.scaler is not None:
            self.scaler.unscale_(grads)
        self.grad_norm = torch.nn.utils.get_total_norm(grads)
        # every rank checks, so all skip together even when only one rank's
        # (unsynchronized) ascent gradient overflowed
        if self.scaler is not None and any_rank(~torch.isfinite(self.grad_norm)):
            raise GradientOverflow(f"fp16 gradient overflow in pass {self.calls} at loss scale "
                                   f"{self.scaler.scale}")
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, self.grad_norm)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               images: torch.Tensor, targets: torch.Tensor, *,
               grad_clip: float = 0.0, autocast_dtype: torch.dtype | None = None,
               scaler: LossScaler | None = None, accumulation_steps: int = 1) -> StepResult:
    """One optimizer step on one batch; ``model`` must be in train mode.

    images: (B, C, H, W); targets: whatever ``loss_fn(logits, targets)`` takes (class
    indices, or soft labels after mixup), batch-first. ``grad_clip`` > 0 clips the global
    gradient norm. ``scaler`` (fp16): loss scaling, and a step skipped on overflow.
    ``accumulation_steps``: the batch runs as that many micro-batches (B / k images each
    in memory at once) with the update of the whole batch.
    """
    if not 1 <= accumulation_steps <= len(images):
        raise VitsamError(f"train.accumulation_steps must be between 1 and the batch size per rank "
                          f"({len(images)}), got {accumulation_steps}")
    closure = _StepClosure(model, optimizer, loss_fn, images, targets, grad_clip, autocast_dtype,
                           scaler, accumulation_steps)
    try:
        optimizer.step(closure)
        skipped = False
    except GradientOverflow:
        skipped = True
    if scaler is not None:
        scaler.update(overflow=skipped)
    return StepResult(loss=closure.loss.item(), logits=closure.logits,
                      grad_norm=closure.grad_norm.item(), skipped=skipped)
