"""Sharpness-Aware Minimization (Foret et al. 2021) and its variants, as optimizer wrappers.

``SAM`` is a drop-in for the most used PyTorch SAM (davda54/sam) with the defects its
users reported fixed (PAPER.md, "What the public SAM implementations get wrong"):

1. one global gradient norm over every parameter of every group, accumulated in fp32;
2. the weights are saved before the ascent and copied back afterwards (never ``w - e``,
   which drifts by rounding), for every parameter, gradient or not;
7. ``state_dict`` holds the base optimizer's moments and the SAM hyperparameters;
8. ``rho = 0`` reproduces the base optimizer bit for bit.

Points 4 and 5 (BatchNorm statistics, dropout masks) belong to the closure and live in
``vitsam.train.step``. Unlike davda54, ``step(closure)`` runs both passes itself:
closure (gradient at w), ascent to w + e, closure (gradient at w + e), restore w, base step.

``GSAM`` (Zhuang et al. 2022) and ``LookSAM`` (Liu et al. 2022) reuse this machinery.
An exception raised by the second closure call (an fp16 overflow that skips the step,
Ctrl-C) leaves the weights at w, never at w + e.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from vitsam.errors import VitsamError

Tensors = dict[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Pass:
    """What one forward/backward pass of an optimizer step must do. The SAM family hands
    it to closures that take one argument (``closure(step_pass)``); a closure without
    arguments (davda54's form, torch's) is called as ``closure()``.

    index: 0 at w, 1 at w + e (the ascent point);
    synchronize: under DDP, all-reduce this pass's gradient; False in SAM's first pass
        with per-rank perturbations (m-sharpness: each rank ascends along its own
        gradient, docs/paper.md, SAM pitfall 3);
    update_bn: BatchNorm running statistics update in this pass: only at w (pitfall 4).
    """
    index: int = 0
    synchronize: bool = True
    update_bn: bool = True


SINGLE_PASS = Pass()                                         # a base optimizer's only pass
ASCENT_POINT_PASS = Pass(index=1, synchronize=True, update_bn=False)


def call_closure(closure: Callable, step_pass: Pass) -> torch.Tensor:
    """``closure(step_pass)`` when the closure takes an argument, else ``closure()``."""
    try:
        takes_pass = bool(inspect.signature(closure).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: call it plainly
        takes_pass = False
    with torch.enable_grad():
        return closure(step_pass) if takes_pass else closure()


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around any base optimizer; ``param_groups`` are shared with the base.

    ``base_optimizer`` is an optimizer class (built on SAM's groups with ``base_kwargs``)
    or an optimizer already built on the same parameters. ``rho``, ``adaptive`` and
    ``eta`` may differ per param group. ASAM (Kwon et al. 2021): T = |w| + eta and
    e = rho T^2 g / ||T g||; plain SAM: e = rho g / ||g||. ``per_rank``: under DDP each
    rank perturbs by its own gradient (m-sharpness, the paper); False all-reduces the
    ascent gradient too ("global" perturbation), see ``first_pass``.
    """

    keeps_first_gradient = False  # GSAM and LookSAM need g (at w) after the ascent

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False,
                 eps: float = 1e-12, eta: float = 0.0, per_rank: bool = True, **base_kwargs):
        if rho < 0:
            raise VitsamError(f"SAM rho must be >= 0, got {rho}")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            params = base_optimizer.param_groups
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        self.eps = eps
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups  # LR schedulers on SAM drive the base
        self.defaults.update(base_optimizer.defaults)
        self._saved_weights: Tensors = {}
        self._first_grads: Tensors = {}  # only kept by variants that need g after the ascent
        self.per_rank = per_rank

    # ------------------------------------------------------------------ the two halves

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save every weight, then climb to w + e using the current gradient."""
        if self.keeps_first_gradient:
            self._first_grads = {p: p.grad.detach().clone() for p, _ in self._gradients()}
        norm = self.grad_norm()
        for group in self.param_groups:
            scale = self._rho(group) / (norm + self.eps)
            for p in group["params"]:
                _copy_into(self._saved_weights, p, p)
                if p.grad is not None:
                    p.add_(self._ascent_direction(p, group) * scale)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Copy the saved weights back (PAPER point 2), then the base optimizer's step
        with the gradient taken at w + e."""
        self._restore_weights()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Both passes: ``closure`` must zero the gradients (or let first_step do it),
        compute the loss and call backward. Returns the first-pass loss."""
        if closure is None:
            raise VitsamError("SAM.step needs a closure that recomputes the loss and gradients")
        loss = call_closure(closure, self.first_pass())
        self.first_step(zero_grad=True)
        try:
            call_closure(closure, ASCENT_POINT_PASS)
        except BaseException:
            self._restore_weights()  # the step is abandoned: back to w, not left at w + e
            raise
        self.second_step()
        return loss

    @torch.no_grad()
    def _restore_weights(self) -> None:
        for p, saved in self._saved_weights.items():
            p.copy_(saved)
        self._first_grads = {}

    # ------------------------------------------------------------------ pieces shared by variants

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """||T g||_2 over all parameters of all groups, accumulated in fp32 (PAPER point 1).
        T = |w| + eta in ASAM groups, 1 otherwise."""
        scaled = [self._scale_matrix(p, group) * _wide(p.grad) if group["adaptive"] else p.grad
                  for p, group in self._gradients()]
        if not scaled:
            raise VitsamError("SAM found no gradients: did the closure call loss.backward()?")
        return _global_norm(scaled)

    def _ascent_direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """g, or T^2 g for ASAM, in fp32 or wider (scaled by rho / ||T g|| in first_step)."""
        direction = _wide(p.grad)
        if group["adaptive"]:
            direction = direction * self._scale_matrix(p, group).square()
        return direction

    @staticmethod
    def _scale_matrix(p: torch.Tensor, group: dict) -> torch.Tensor:
        """ASAM's diagonal T_w = |w| + eta (Kwon et al. 2021, eq. 7), in fp32 or wider."""
        return _wide(p.detach()).abs() + group["eta"]

    def _rho(self, group: dict) -> float:
        return group["rho"]

    def first_pass(self) -> Pass:
        """The pass at w: under DDP its gradient stays per rank (m-sharpness) unless
        ``per_rank=False`` (the "global" perturbation) or the variant reuses g in the
        update (GSAM, LookSAM: a per-rank g would make the ranks' updates differ)."""
        return Pass(index=0, synchronize=not self.per_rank or self.keeps_first_gradient, update_bn=True)

    def _gradients(self) -> Iterable[tuple[torch.Tensor, dict]]:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p, group

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Base moments + the shared param groups, which carry rho / adaptive / eta
        (PAPER point 7), + the variant's own persistent per-parameter state."""
        return {"base": self.base_optimizer.state_dict(), "sam": super().state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or not {"base", "sam"} <= state_dict.keys():
            raise VitsamError(
                f"{type(self).__name__}.load_state_dict: expected the keys 'base' and 'sam' "
                "(a state saved by the SAM family); a plain optimizer state cannot resume SAM")
        super().load_state_dict(state_dict["sam"])
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # loading replaced the base's list


class GSAM(SAM):
    """Surrogate-gap guided SAM (Zhuang et al. 2022, Algorithm 1).

    Ascent as SAM with rho_t tied to the learning rate,
    rho_t = rho_min + (rho - rho_min)(lr_t - lr_min) / (lr_max - lr_min),
    lr_t read from the param groups at each step (so an LR scheduler drives rho_t too),
    lr_max defaulting to the group's lr at construction (the schedule's peak); the
    fraction is clamped to [0, 1] (a warmup below lr_min never gives rho_t < rho_min).
    The update direction is g_adv - alpha * g_perp, g_perp the part of the first gradient
    g orthogonal to the perturbed gradient g_adv: g_perp = g - (g . g_adv / ||g_adv||^2) g_adv.
    """

    keeps_first_gradient = True

    def __init__(self, params, base_optimizer, rho: float = 0.05, rho_min: float = 0.0,
                 alpha: float = 0.2, lr_min: float = 0.0, lr_max: float | None = None,
                 adaptive: bool = False, eps: float = 1e-12, eta: float = 0.0, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eps=eps, eta=eta,
                         **base_kwargs)
        for group in self.param_groups:
            group.setdefault("rho_min", rho_min)
            group.setdefault("alpha", alpha)
            group.setdefault("lr_min", lr_min)
            group.setdefault("lr_max", group.get("initial_lr", group["lr"]) if lr_max is None else lr_max)

    def _rho(self, group: dict) -> float:
        lr_range = group["lr_max"] - group["lr_min"]
        if lr_range <= 0:
            return group["rho"]
        fraction = min(1.0, max(0.0, (group["lr"] - group["lr_min"]) / lr_range))
        return group["rho_min"] + (group["rho"] - group["rho_min"]) * fraction

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        adversarial = {p: p.grad for p, _ in self._gradients()}
        g_perp = _orthogonal_part(self._first_grads, adversarial, self.eps)
        for p, group in self._gradients():
            if p in g_perp:
                p.grad.sub_(group["alpha"] * g_perp[p])
        super().second_step(zero_grad)


class LookSAM(SAM):
    """LookSAM (Liu et al. 2022, Algorithm 1): the SAM ascent only every ``k`` steps.

    On an ascent step it stores g_v, the component of the SAM gradient g_s orthogonal to
    the plain gradient g: g_v = g_s - (g . g_s / ||g||^2) g, and updates with g_s. On the
    k - 1 steps between, the closure runs ONCE (PAPER point 10: the second pass is really
    skipped) and the update uses g + alpha (||g|| / ||g_v||) g_v.
    """

    keeps_first_gradient = True

    def __init__(self, params, base_optimizer, rho: float = 0.05, k: int = 5, alpha: float = 0.7,
                 adaptive: bool = False, eps: float = 1e-12, eta: float = 0.0, **base_kwargs):
        if k < 1:
            raise VitsamError(f"LookSAM k must be >= 1, got {k}")
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eps=eps, eta=eta,
                         **base_kwargs)
        for group in self.param_groups:
            group.setdefault("alpha", alpha)
        self.k = k
        self.steps_done = 0

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.steps_done % self.k == 0 or not self.state:
            loss = super().step(closure)
        else:
            loss = call_closure(closure, SINGLE_PASS)
            self._add_orthogonal_gradient()
            self.base_optimizer.step()
        self.steps_done += 1
        return loss

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Store g_v from g (saved by first_step) and g_s (current), then update with g_s."""
        sam_grads = {p: p.grad for p, _ in self._gradients()}
        self.state.clear()
        for p, g_v in _orthogonal_part(sam_grads, self._first_grads, self.eps).items():
            self.state[p]["g_v"] = g_v.to(p.grad.dtype)
        super().second_step(zero_grad)

    @torch.no_grad()
    def _add_orthogonal_gradient(self) -> None:
        g_norm = _global_norm([p.grad for p, _ in self._gradients()])
        g_v_norm = _global_norm([state["g_v"] for state in self.state.values()])
        ratio = g_norm / (g_v_norm + self.eps)
        for p, group in self._gradients():
            if p in self.state:
                p.grad.add_(group["alpha"] * ratio * _wide(self.state[p]["g_v"]))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.steps_done = state_dict.get("steps_done", 0)


# ---------------------------------------------------------------------- helpers

def _copy_into(store: Tensors, key: torch.Tensor, value: torch.Tensor) -> None:
    """store[key] = exact copy of value, reusing the buffer from the previous step."""
    buffer = store.get(key)
    if buffer is None:
        store[key] = value.detach().clone()
    else:
        buffer.copy_(value)


def _wide_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 for bf16 / fp16 tensors (PAPER point 1), unchanged for fp32 / fp64."""
    return t.to(_wide_dtype(t))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(_wide(a).flatten(), _wide(b).flatten())


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One L2 norm over all tensors, accumulated in fp32 (fp64 for fp64 tensors)."""
    norms = [torch.linalg.vector_norm(t, 2, dtype=_wide_dtype(t)) for t in tensors]
    widest = functools.reduce(torch.promote_types, [n.dtype for n in norms])
    return torch.linalg.vector_norm(torch.stack([n.to(widest) for n in norms]), 2)


def _orthogonal_part(x: Tensors, y: Tensors, eps: float) -> Tensors:
    """x - (x . y / ||y||^2) y, dot product and norm over all parameters, in fp32.
    Parameters absent from y keep their x entirely."""
    dot = sum(_dot(x[p], y[p]) for p in x if p in y)
    coef = dot / (_global_norm(list(y.values())).square() + eps)
    return {p: _wide(x[p]) - coef * _wide(y[p]) if p in y else _wide(x[p]) for p in x}
