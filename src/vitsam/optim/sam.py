"""Sharpness-Aware Minimization (Foret et al. 2021) and its variants, as optimizer wrappers.

``SAM`` is a drop-in for the most used PyTorch SAM (davda54/sam), with the defects its
users reported fixed (docs/paper.md, "SAM pitfalls"):

1. one global gradient norm over every parameter of every group, accumulated in fp32;
2. the weights are saved before the ascent and copied back afterwards (never ``w - e``,
   which drifts by rounding), for every parameter, gradient or not;
7. ``state_dict`` holds the base optimizer's moments and the SAM hyperparameters;
8. ``rho = 0`` reproduces the base optimizer bit for bit.

Pitfalls 3-6 (gradient synchronisation, BatchNorm statistics, dropout masks, clipping)
belong to the closure; ``vitsam.train.step`` does them, told what each pass is by a ``Pass``.

Three ways to call it, each one step with two forward/backward passes:

- davda54's halves: ``loss.backward(); opt.first_step(zero_grad=True);
  loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)``;
- davda54's closure form: ``loss.backward()`` (the gradient at w), then
  ``opt.step(closure)``: the closure (forward + backward) runs once, at w + e, after
  ``first_step`` has zeroed the gradient. Returns None, as there;
- vitsam's closure form (``vitsam.train.step``): no gradient computed since the last step
  (None, zeroed in place, or left untouched by the previous step): the closure runs at w,
  then at w + e, each time on no gradient (or zeros), so zeroing inside it is optional.
  Returns the loss at w.

Tensor work runs as ``torch._foreach_*`` operations (one call per parameter group, not one
per tensor). ``GSAM`` (Zhuang et al. 2022) and ``LookSAM`` (Liu et al. 2022) reuse this
machinery. An exception raised by the
closure at w + e (an fp16 overflow that skips the step, Ctrl-C) leaves the weights at w.
"""
from __future__ import annotations

import functools
import inspect
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from vitsam.errors import VitsamError

Tensors = list[torch.Tensor]


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


@dataclass
class _GroupGradients:
    """One param group's parameters that have a gradient, and those gradients."""
    group: dict
    params: Tensors
    grads: Tensors


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
        self.per_rank = per_rank
        self._saved_params: Tensors = []   # every parameter, in group order ...
        self._saved_weights: Tensors = []  # ... and its weights before the ascent (reused buffers)
        self._at_ascent_point = False
        self._first_grads: dict[int, torch.Tensor] = {}  # id(p) -> g at w, for GSAM and LookSAM
        self._left_gradients: dict[int, tuple[weakref.ref, int]] = {}  # see _gradient_given

    # ------------------------------------------------------------------ the two halves

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save every weight, then climb to w + e along the gradient present now."""
        found = self._gradients()
        if self.keeps_first_gradient:  # a copy: DDP may reuse the gradient's memory
            self._first_grads = {id(p): g for item in found
                                 for p, g in zip(item.params, torch._foreach_clone(item.grads))}
        scales = [self._scale_matrix(item) for item in found]
        scaled = [_wide_all(item.grads) if t is None else torch._foreach_mul(t, _wide_all(item.grads))
                  for item, t in zip(found, scales)]
        norm = _global_norm([g for group_scaled in scaled for g in group_scaled])
        self._save_weights()
        for item, t, t_g in zip(found, scales, scaled):
            direction = t_g if t is None else torch._foreach_mul(t, t_g)  # g, or T^2 g (ASAM)
            _add_scaled_(item.params, direction, self._rho(item.group) / (norm + self.eps))
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Copy the saved weights back (pitfall 2), then the base optimizer's step with the
        gradient taken at w + e."""
        self._require_ascent_point()
        self._restore_weights()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._remember_gradients()

    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        """One SAM step; see the module docstring for the two closure forms. Returns the
        loss at w in vitsam's form, None in davda54's (the caller has the loss)."""
        if closure is None:
            raise VitsamError(f"{type(self).__name__}.step needs a closure that recomputes the loss "
                              "and gradients, or call first_step / second_step around your own backward")
        try:
            loss = None if self._gradient_given() else call_closure(closure, self.first_pass())
            self.first_step(zero_grad=True)
            self._pass_at_ascent_point(closure)
        except BaseException:
            self._remember_gradients()  # what a failed pass left is no gradient given next time
            raise
        self.second_step()
        return loss

    def _require_ascent_point(self) -> None:
        if not self._at_ascent_point:
            raise VitsamError(f"{type(self).__name__}.second_step without first_step: "
                              "the weights are not at an ascent point")

    def _pass_at_ascent_point(self, closure: Callable) -> None:
        try:
            call_closure(closure, ASCENT_POINT_PASS)
        except BaseException:
            self._restore_weights()  # the step is abandoned: back to w, not left at w + e
            raise

    # ------------------------------------------------------------------ which call form

    def _gradient_given(self) -> bool:
        """True when the caller computed a gradient at w before ``step`` (davda54's form).
        Two kinds of present gradient are no gradient computed, and step runs the closure
        at w itself: one the previous step left untouched (same tensor, same version;
        dropped, whatever the closure does it then gets the gradient at w), and one that
        is zero everywhere (``zero_grad(set_to_none=False)``; a closure adds to it or
        zeroes it, either way the sum is the gradient at w)."""
        present = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not present:
            return False
        if all(_unchanged(self._left_gradients.get(id(p.grad)), p.grad) for p in present):
            for p in present:
                p.grad = None
            return False
        # one sync, in davda54's form only; a non-finite gradient counts as given (as there)
        return bool(_global_norm([p.grad for p in present]) != 0)

    def _remember_gradients(self) -> None:
        """Fingerprint the gradients a step leaves behind (tensor identity and version)."""
        self._left_gradients = {id(p.grad): (weakref.ref(p.grad), p.grad._version)
                                for group in self.param_groups for p in group["params"]
                                if p.grad is not None}

    # ------------------------------------------------------------------ pieces shared by variants

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """||T g||_2 over all parameters of all groups, accumulated in fp32 (pitfall 1).
        T = |w| + eta in ASAM groups, 1 otherwise."""
        scaled = []
        for item in self._gradients():
            t, grads = self._scale_matrix(item), _wide_all(item.grads)
            scaled += grads if t is None else torch._foreach_mul(t, grads)
        return _global_norm(scaled)

    @staticmethod
    def _scale_matrix(item: _GroupGradients) -> Tensors | None:
        """ASAM's diagonal T_w = |w| + eta (Kwon et al. 2021, eq. 7), in fp32 or wider;
        None (the identity) for plain SAM."""
        if not item.group["adaptive"]:
            return None
        t = torch._foreach_abs(_wide_all(item.params))
        torch._foreach_add_(t, item.group["eta"])
        return t

    def _rho(self, group: dict) -> float:
        return group["rho"]

    def first_pass(self) -> Pass:
        """The pass at w: under DDP its gradient stays per rank (m-sharpness) unless
        ``per_rank=False`` (the "global" perturbation) or the variant reuses g in the
        update (GSAM, LookSAM: a per-rank g would make the ranks' updates differ)."""
        return Pass(index=0, synchronize=not self.per_rank or self.keeps_first_gradient, update_bn=True)

    def _gradients(self) -> list[_GroupGradients]:
        """Per group, the parameters that have a gradient; an error when none has."""
        found = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                found.append(_GroupGradients(group, params, [p.grad for p in params]))
        if not found:
            raise VitsamError(f"{type(self).__name__} found no gradients: did the closure call loss.backward()?")
        return found

    def _all_params(self) -> Tensors:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def _save_weights(self) -> None:
        params = self._all_params()
        if _same_tensors(params, self._saved_params):
            torch._foreach_copy_(self._saved_weights, params)
        else:  # first step, or the groups changed
            self._saved_params, self._saved_weights = params, torch._foreach_clone(params)
        self._at_ascent_point = True

    @torch.no_grad()
    def _restore_weights(self) -> None:
        if self._at_ascent_point:
            torch._foreach_copy_(self._saved_params, self._saved_weights)
        self._at_ascent_point = False
        self._first_grads = {}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Base moments + the shared param groups, which carry rho / adaptive / eta
        (pitfall 7), + the variant's own persistent per-parameter state."""
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
        """g_adv - alpha g_perp = (1 + alpha c) g_adv - alpha g, c = g . g_adv / ||g_adv||^2,
        in place on the gradients that have a g (the others are left as they are), then
        SAM's second step."""
        self._require_ascent_point()
        found = self._gradients()
        paired = [[(g_adv, self._first_grads[id(p)]) for p, g_adv in zip(item.params, item.grads)
                   if id(p) in self._first_grads] for item in found]
        adversarial = [g_adv for pairs in paired for g_adv, _ in pairs]
        if adversarial:
            first = [g for pairs in paired for _, g in pairs]
            coef = _global_dot(_wide_all(first), _wide_all(adversarial)) / (
                _global_norm([g for item in found for g in item.grads]).square() + self.eps)
            for item, pairs in zip(found, paired):
                if pairs:
                    grads, firsts = map(list, zip(*pairs))
                    torch._foreach_mul_(grads, 1 + item.group["alpha"] * coef)
                    torch._foreach_add_(grads, firsts, alpha=-item.group["alpha"])
        super().second_step(zero_grad)


class LookSAM(SAM):
    """LookSAM (Liu et al. 2022, Algorithm 1): the SAM ascent only every ``k`` steps.

    On an ascent step it stores g_v, the component of the SAM gradient g_s orthogonal to
    the plain gradient g: g_v = g_s - (g . g_s / ||g||^2) g, and updates with g_s. On the
    k - 1 steps between, one pass only (pitfall 10: the second pass is really skipped) and
    the update uses g + alpha (||g|| / ||g_v||) g_v, a few foreach operations on top of the
    base step. ``ascent_due`` says which kind the next step is. davda54-style use: when
    ``ascent_due``, ``first_step`` / backward / ``second_step``; else ``loss.backward()``
    and ``step()`` (no closure). ``step(closure)`` does either, in both closure forms.
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
        self._g_v_cache: tuple[list, torch.Tensor] | None = None  # see _stored_g_v

    @property
    def ascent_due(self) -> bool:
        """The next step is a full SAM step: every k-th step, and while no g_v is stored."""
        return self.steps_done % self.k == 0 or not self.state

    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        if self.ascent_due:
            return super().step(closure)
        try:
            given = self._gradient_given()
            if not given and closure is None:
                raise VitsamError("LookSAM.step() without a closure needs the gradient at w: "
                                  "call loss.backward() first")
            loss = None if given else call_closure(closure, SINGLE_PASS)
            self._reuse_step()
        finally:
            self._remember_gradients()
        return loss

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Store g_v from g (saved by first_step) and g_s (current), then update with g_s."""
        self._require_ascent_point()
        found = self._gradients()
        sam_grads = {id(p): g for item in found for p, g in zip(item.params, item.grads)}
        g_v = _orthogonal_part(sam_grads, self._first_grads, self.eps)
        self.state.clear()
        for item in found:
            for p, g in zip(item.params, item.grads):
                self.state[p]["g_v"] = g_v[id(p)].to(g.dtype)
        self._g_v_cache = None
        self.steps_done += 1
        super().second_step(zero_grad)

    @torch.no_grad()
    def _reuse_step(self) -> None:
        """g + alpha (||g|| / ||g_v||) g_v, then the base step: one foreach norm and one
        foreach add on top of it (||g_v|| is kept from the ascent)."""
        g_norm = _global_norm([g for item in self._gradients() for g in item.grads])
        stored, g_v_norm = self._stored_g_v()
        ratio = g_norm / (g_v_norm + self.eps)
        for group, params, g_vs in stored:
            pairs = [(p.grad, v) for p, v in zip(params, g_vs) if p.grad is not None]
            if pairs:
                grads, with_g = map(list, zip(*pairs))
                _add_scaled_(grads, _wide_all(with_g), group["alpha"] * ratio)
        self.base_optimizer.step()
        self.steps_done += 1

    def _stored_g_v(self) -> tuple[list[tuple[dict, Tensors, Tensors]], torch.Tensor]:
        """Per group (group, parameters with a stored g_v, their g_v), and ||g_v||; built
        from ``state`` once per ascent (and after a resume), in parameter order."""
        if self._g_v_cache is None:
            stored = []
            for group in self.param_groups:
                params = [p for p in group["params"] if p in self.state]
                stored.append((group, params, [self.state[p]["g_v"] for p in params]))
            self._g_v_cache = stored, _global_norm([v for _, _, g_vs in stored for v in g_vs])
        return self._g_v_cache

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.steps_done = state_dict.get("steps_done", 0)
        self._g_v_cache = None


# ---------------------------------------------------------------------- helpers

def _unchanged(fingerprint: tuple[weakref.ref, int] | None, grad: torch.Tensor) -> bool:
    return fingerprint is not None and fingerprint[0]() is grad and fingerprint[1] == grad._version


def _same_tensors(a: Tensors, b: Tensors) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


_NARROW_FLOATS = (torch.bfloat16, torch.float16)


def _wide_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in _NARROW_FLOATS else t.dtype


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 for bf16 / fp16 tensors (pitfall 1), the tensor itself for fp32 / fp64."""
    return t.float() if t.dtype in _NARROW_FLOATS else t


def _wide_all(tensors: Tensors) -> Tensors:
    return [_wide(t) for t in tensors]


def _global_norm(tensors: Tensors) -> torch.Tensor:
    """One L2 norm over all tensors, accumulated in fp32 (fp64 for fp64 tensors): one
    foreach norm per (device, dtype), combined on the first tensor's device."""
    by_kind: dict[tuple, Tensors] = defaultdict(list)
    for t in tensors:
        by_kind[(t.device, _wide_dtype(t))].append(t)
    widest = functools.reduce(torch.promote_types, [dtype for _, dtype in by_kind])
    device = tensors[0].device
    norms = [torch.stack(torch._foreach_norm(ts, 2, dtype=dtype)).to(device, widest)
             for (_, dtype), ts in by_kind.items()]
    return torch.linalg.vector_norm(torch.cat(norms), 2)


def _add_scaled_(targets: Tensors, sources: Tensors, scale: torch.Tensor,
                 host_scalar: bool | None = None) -> None:
    """targets += scale * sources, ``scale`` a 0-d tensor. On the CPU (``host_scalar``
    by default) as one foreach call with a Python scalar: reading it costs nothing there,
    and each foreach call costs a dispatch per tensor. Elsewhere as fused foreach kernels,
    without a host sync."""
    if host_scalar is None:
        host_scalar = scale.device.type == "cpu"
    if host_scalar:
        torch._foreach_add_(targets, sources, alpha=scale.item())
    else:
        torch._foreach_add_(targets, torch._foreach_mul(sources, scale))


def _global_dot(xs: Tensors, ys: Tensors) -> torch.Tensor:
    """sum_i x_i . y_i over pairs of same-shaped tensors (wide already): one dot product
    of the concatenations, not one per tensor."""
    return torch.dot(torch.cat([x.reshape(-1) for x in xs]), torch.cat([y.reshape(-1) for y in ys]))


def _orthogonal_part(x: dict, y: dict, eps: float) -> dict:
    """x - (x . y / ||y||^2) y per key (a parameter's id), the dot product and the norm over
    all parameters, in fp32 or wider. Keys absent from y keep their x entirely (a copy)."""
    common = [key for key in x if key in y]
    result = {}
    if common:
        xs, ys = _wide_all([x[key] for key in common]), _wide_all([y[key] for key in common])
        coef = _global_dot(xs, ys) / (_global_norm(list(y.values())).square() + eps)
        result = dict(zip(common, torch._foreach_sub(xs, torch._foreach_mul(ys, coef))))
    return {key: result[key] if key in result else _wide(value).clone() for key, value in x.items()}
