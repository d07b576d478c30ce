"""One training step: the same code path for a base optimizer and the SAM family.

``train_step`` builds a closure (forward, loss, backward, clip) and hands it to
``optimizer.step``: a torch optimizer calls it once, SAM twice (at w, then at w + e),
LookSAM once or twice. The optimizer says what each pass must do with a ``Pass``
(``vitsam.optim.Pass``: synchronize or not, update BatchNorm statistics or not); the
closure does it. What keeps the passes consistent (docs/paper.md, "SAM pitfalls"):

- pitfall 5: the RNG state is saved on the first call and restored on every later call,
  so dropout / drop-path draw the same masks in both passes; augmentation draws (mixup,
  adversarial examples) happen once, in ``objective.prepare``, before the passes;
- pitfall 4: a pass with ``update_bn=False`` runs with BatchNorm running statistics
  frozen: BN still normalizes with the batch statistics, but only the first pass
  updates the running averages;
- pitfall 6: the gradient is clipped inside the closure, so the final (second-pass)
  gradient is the one clipped. Clipping the first pass too is harmless: a uniform
  rescale of g leaves g / ||g|| (and ASAM's T^2 g / ||T g||) unchanged;
- pitfall 3: a pass with ``synchronize=False`` runs under DDP's ``no_sync``, so each rank
  perturbs by its own gradient (m-sharpness);
- pitfall 9: with ``accumulation_steps = k`` every pass runs over all k micro-batches, so
  the ascent uses the gradient of the whole batch, and so does the update; a
  synchronized pass all-reduces once, with its last micro-batch;
- pitfall 6, fp16: each pass's gradient is unscaled before its norm is taken; a
  non-finite gradient in either pass (on any rank; an fp16 overflow, or a diverging run
  in any precision) raises ``GradientOverflow`` out of ``optimizer.step``, before the
  base optimizer's update (SAM puts w back first), and ``train_step`` reports the step
  as skipped: the weights and the optimizer state are untouched.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitsam.errors import VitsamError
from vitsam.optim.sam import SINGLE_PASS, Pass
from vitsam.train.distributed import any_rank
from vitsam.train.objectives import Batch
from vitsam.train.precision import GradientOverflow, LossScaler


@dataclass
class StepResult:
    loss: float                    # first-pass loss (at the unperturbed weights)
    logits: torch.Tensor | None    # first-pass logits, detached (None: the objective has none)
    grad_norm: float               # global norm of the final gradient, before clipping
    skipped: bool = False          # a pass's gradient was not finite: weights and optimizer untouched


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode keep normalizing with batch statistics but update
    neither running_mean / running_var nor num_batches_tracked (pitfall 4)."""
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


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """A batch of batch-first tensors -> ``parts`` micro-batches of about B / parts each."""
    pieces = [torch.tensor_split(t, parts) for t in batch]
    return [tuple(piece[i] for piece in pieces) for i in range(parts)]


class _StepClosure:
    """Forward + backward over the micro-batches, unscale, clip; records the first pass's
    loss and logits and the last pass's gradient norm. ``trainee(batch)`` returns
    (mean loss, logits or None): a ``TrainingModule``, possibly inside DDP."""

    def __init__(self, trainee: nn.Module, batch: Batch, grad_clip: float, autocast_dtype,
                 scaler: LossScaler | None, accumulation_steps: int):
        self.trainee, self.batch = trainee, batch
        self.grad_clip, self.autocast_dtype = grad_clip, autocast_dtype
        self.scaler, self.accumulation_steps = scaler, accumulation_steps
        self.device = batch[0].device
        self.calls = 0
        self.rng: _RngState | None = None
        self.loss = self.logits = self.grad_norm = None

    def __call__(self, step_pass: Pass = SINGLE_PASS) -> torch.Tensor:
        if self.calls == 0:
            self.rng = _RngState(self.device)
        else:
            self.rng.restore()  # the same dropout masks as the first pass (pitfall 5)
        frozen_bn = contextlib.nullcontext() if step_pass.update_bn else frozen_batchnorm_stats(self.trainee)
        self.trainee.zero_grad(set_to_none=True)
        with frozen_bn:
            loss, logits = self._accumulate_gradients(step_pass.synchronize)
        if self.calls == 0:
            self.loss, self.logits = loss, logits
        self.calls += 1
        self._finish_gradients()
        return loss

    def _accumulate_gradients(self, synchronize: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each micro-batch's mean loss weighted by its share of the batch, so the summed
        gradient is that of the whole batch's mean loss (pitfall 9)."""
        micro_batches = split_batch(self.batch, self.accumulation_steps)
        total = len(self.batch[0])
        losses, logits = [], []
        for i, micro in enumerate(micro_batches):
            sync_now = synchronize and i == len(micro_batches) - 1
            with self._gradient_sync(sync_now), self._autocast():
                loss, out = self.trainee(micro)
                loss = loss * (len(micro[0]) / total)
            (loss if self.scaler is None else loss * self.scaler.scale).backward()
            losses.append(loss.detach())
            if out is not None:
                logits.append(out.detach())
        # loss: mean over B; logits (B, classes)
        return torch.stack(losses).sum(), torch.cat(logits) if logits else None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _gradient_sync(self, synchronize: bool):
        """DDP all-reduces only when asked: not in a per-rank SAM ascent pass (pitfall 3),
        not before the last micro-batch."""
        if not synchronize and hasattr(self.trainee, "no_sync"):
            return self.trainee.no_sync()
        return contextlib.nullcontext()

    def _finish_gradients(self) -> None:
        """Unscale (fp16) before any norm, skip a non-finite gradient on any rank, clip (pitfall 6)."""
        params = [p for p in self.trainee.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        if self.scaler is not None:
            self.scaler.unscale_(grads)
        self.grad_norm = torch.nn.utils.get_total_norm(grads)
        # every rank checks, so all skip together even when only one rank's
        # (unsynchronized) ascent gradient overflowed
        if any_rank(~torch.isfinite(self.grad_norm)):
            raise GradientOverflow(f"non-finite gradient in pass {self.calls}")
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, self.grad_norm)


def train_step(trainee: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, *,
               grad_clip: float = 0.0, autocast_dtype: torch.dtype | None = None,
               scaler: LossScaler | None = None, accumulation_steps: int = 1) -> StepResult:
    """One optimizer step on one (prepared) batch; ``trainee`` must be in train mode.

    ``trainee(batch) -> (mean loss, logits or None)``: a ``TrainingModule`` (model and
    objective), possibly wrapped in DDP. ``batch``: a tuple of batch-first tensors, e.g.
    (images (B, C, H, W), targets). ``grad_clip`` > 0 clips the global gradient norm.
    ``scaler`` (fp16): loss scaling, and a step skipped on overflow. ``accumulation_steps``:
    the batch runs as that many micro-batches (B / k images each in memory at once) with
    the update of the whole batch.
    """
    if not 1 <= accumulation_steps <= len(batch[0]):
        raise VitsamError(f"train.accumulation_steps must be between 1 and the batch size per rank "
                          f"({len(batch[0])}), got {accumulation_steps}")
    closure = _StepClosure(trainee, batch, grad_clip, autocast_dtype, scaler, accumulation_steps)
    # no gradient may be left from the previous step: the SAM family treats a gradient
    # present at step() as the first pass already taken (davda54's call form)
    optimizer.zero_grad(set_to_none=True)
    try:
        optimizer.step(closure)
        skipped = False
    except GradientOverflow:
        skipped = True
    if scaler is not None:
        scaler.update(overflow=skipped)
    return StepResult(loss=closure.loss.item(), logits=closure.logits,
                      grad_norm=closure.grad_norm.item(), skipped=skipped)
