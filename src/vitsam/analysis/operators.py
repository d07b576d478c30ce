"""Curvature of the training loss as linear operators on flat parameter vectors: the
Hessian and the generalized Gauss-Newton matrix (for softmax cross-entropy the same
as the Fisher information; Martens 2020, Sec. 9.2).

The loss is the mean over all examples of the batches, with the model in eval mode
(BatchNorm on running statistics, no dropout or drop-path) and the explicit attention
path (``measurement_mode``). Batches may be any re-iterable (a list, a DataLoader):
products are accumulated batch by batch, so a whole data set can be streamed.

Hessian-vector products, ``method``:

- ``"graph"``: the gradient's graph is built once (one forward and backward with
  ``create_graph``) on all examples merged into one batch, and each product is one
  backward through it (reverse-over-reverse on a kept graph, as PyHessian does for one
  batch). The fastest by far when the graph fits in memory.
- ``"jvp"``: forward-over-reverse, ``jvp`` of ``grad`` with ``torch.func``, per batch;
- ``"double_backward"``: reverse-over-reverse, recomputed per batch and product;
- ``"auto"`` (default): ``"graph"`` when its memory, measured on two examples and
  scaled, fits ``graph_memory`` bytes (default: a quarter of the free memory of the
  device), else the faster of the other two, timed once per model architecture and
  input shape and remembered for the process.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable

import torch
from torch import nn

from vitsam.analysis import Batch, LossFn, measurement_mode
from vitsam.errors import VitsamError, unknown_choice

HVP_METHODS = ("auto", "graph", "jvp", "double_backward")


def _affine_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm written as the per-channel affine map it is:
    x * weight / sqrt(running_var + eps) + (bias - running_mean * that scale)."""
    scale = torch.rsqrt(self.running_var + self.eps)
    scale = scale * self.weight if self.weight is not None else scale
    shift = -self.running_mean * scale + (self.bias if self.bias is not None else 0.0)
    shape = (1, -1) + (1,) * (x.ndim - 2)  # channels on axis 1
    return x * scale.view(shape) + shift.view(shape)


@contextlib.contextmanager
def affine_batch_norm(model: nn.Module) -> Iterator[nn.Module]:
    """Eval-mode BatchNorm layers computed as plain affine maps while inside: the same
    function of the parameters, but its second derivatives are a few products, where
    PyTorch's generic batch-norm double backward (written for training mode too) cost
    about a fifth of a ResNet's Hessian-vector product."""
    patched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and not m.training and m.running_mean is not None and "forward" not in vars(m)]
    for module in patched:
        module.forward = _affine_batch_norm.__get__(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward
_FASTER_RECOMPUTE: dict[tuple, str] = {}  # architecture + input shape -> "jvp" | "double_backward"


def reiterable(batches: Iterable[Batch]) -> Iterable[Batch]:
    """Batches that can be iterated once per product: a one-shot iterator cannot."""
    if iter(batches) is batches:
        raise VitsamError("curvature operators iterate over the batches once per product: pass a list or "
                          "a re-iterable loader (e.g. a DataLoader), not a one-shot iterator or generator")
    return batches


class CurvatureOperator:
    """v -> A v for the loss over ``batches``, restricted to ``params`` (A's diagonal
    block for a parameter group; all trainable parameters when None). Vectors are flat,
    in the order of ``model.named_parameters()``. Subclasses define ``_product``, the
    product on one batch's mean loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                 params: Sequence[nn.Parameter] | None = None):
        chosen = {id(p) for p in params} if params is not None else None
        self.model, self.loss_fn, self.batches = model, loss_fn, reiterable(batches)
        self.active = {n: p.detach() for n, p in model.named_parameters()
                       if (p.requires_grad if chosen is None else id(p) in chosen)}
        if not self.active:
            raise VitsamError("curvature operator: no parameters selected (none require grad, or the group is empty)")
        # Parameters outside the block are constants: detached, so no graph reaches them.
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in self.active}
        self.sizes = [p.numel() for p in self.active.values()]
        self.dim = sum(self.sizes)
        first = next(iter(self.active.values()))
        self.device, self.dtype = first.device, first.dtype
        self.calls = 0

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = flat.to(self.device, self.dtype).split(self.sizes)
        return {n: piece.view_as(p) for (n, p), piece in zip(self.active.items(), pieces)}

    @staticmethod
    def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _loss(self, active: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(self.model, {**self.frozen, **active}, (images,))
        return self.loss_fn(logits, labels)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """v: flat (dim,) -> A v: flat (dim,)."""
        self.calls += 1
        tangent = self.split(v)
        with measurement_mode(self.model), affine_batch_norm(self.model), torch.enable_grad():
            return self._apply(tangent)

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the loss over the batches (a good Lanczos start: it lies
        mostly in the top eigenspace of a trained network's Hessian, Gur-Ari et al. 2018)."""
        out = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        count = 0
        with measurement_mode(self.model), torch.enable_grad():
            for images, labels in self.batches:
                active = {n: p.clone().requires_grad_(True) for n, p in self.active.items()}
                grads = torch.autograd.grad(self._loss(active, images, labels), list(active.values()))
                out += len(labels) * self.flatten(grads)
                count += len(labels)
        return out / count

    def _apply(self, tangent: dict) -> torch.Tensor:
        """The example-weighted sum of the per-batch products (each batch's loss is a mean)."""
        out = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        count = 0
        for images, labels in self.batches:
            n = len(labels)
            out += n * self.flatten(self._product(tangent, images, labels))
            count += n
        if count == 0:
            raise VitsamError("curvature operator: the batches are empty")
        return out / count

    def _product(self, tangent: dict, images, labels) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class HessianOperator(CurvatureOperator):
    """v -> H v (see the module docstring for ``method``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                 params: Sequence[nn.Parameter] | None = None, method: str = "auto",
                 graph_memory: int | None = None, _graph: "GradientGraph | None" = None):
        if method not in HVP_METHODS:
            raise unknown_choice("Hessian-vector product method", method, HVP_METHODS)
        super().__init__(model, loss_fn, batches, params)
        self.graph = _graph
        if _graph is None and method in ("auto", "graph"):
            self.graph = GradientGraph.build(model, loss_fn, self.batches, graph_memory,
                                             required=method == "graph")
        self.method = "graph" if self.graph is not None else method
        if self.method == "graph":
            self._targets = [i for i, n in enumerate(self.graph.names) if n in self.active]
            if len(self._targets) != len(self.active):
                raise VitsamError("Hessian operator: the kept graph does not cover the selected parameters")

    def restrict(self, params: Sequence[nn.Parameter]) -> "HessianOperator":
        """The diagonal block of ``params``, sharing this operator's kept graph (if any)."""
        method = "graph" if self.graph is not None else self.method
        return HessianOperator(self.model, self.loss_fn, self.batches, params, method, _graph=self.graph)

    def release(self) -> None:
        """Free the kept graph (the operator falls back to recomputing products)."""
        self.graph = None
        if self.method == "graph":
            self.method = "auto"

    def gradient(self) -> torch.Tensor:
        if self.method == "graph":  # the kept graph's root: no pass over the data
            return self.flatten(self.graph.grads[i].detach() for i in self._targets)
        return super().gradient()

    def _apply(self, tangent: dict) -> torch.Tensor:
        if self.method == "graph":
            return self.flatten(self.graph.hvp(self._targets, list(tangent.values())))
        if self.method == "auto":
            self.method = self._faster_recompute(tangent)
        return super()._apply(tangent)

    def _product(self, tangent: dict, images, labels) -> list[torch.Tensor]:
        if self.method == "jvp":
            grad_fn = torch.func.grad(self._loss)
            _, hv = torch.func.jvp(lambda p: grad_fn(p, images, labels), (self.active,), (tangent,))
            return list(hv.values())
        active = {n: p.clone().requires_grad_(True) for n, p in self.active.items()}
        grads = torch.autograd.grad(self._loss(active, images, labels), list(active.values()), create_graph=True)
        return list(torch.autograd.grad(grads, list(active.values()), list(tangent.values())))

    def _faster_recompute(self, tangent: dict, examples: int = 8) -> str:
        """Time both recomputing products on a few examples (twice each: the first call
        warms up), once per architecture and input shape in this process."""
        images, labels = next(iter(self.batches))
        images, labels = images[:examples], labels[:examples]
        key = (type(self.model).__qualname__, tuple((n, tuple(p.shape)) for n, p in self.active.items()),
               tuple(images.shape[1:]), self.device.type, self.dtype)
        if key not in _FASTER_RECOMPUTE:
            seconds = {}
            for method in ("jvp", "double_backward"):
                self.method = method
                for _ in range(2):
                    start = time.perf_counter()
                    self._product(tangent, images, labels)
                    seconds[method] = time.perf_counter() - start
            _FASTER_RECOMPUTE[key] = min(seconds, key=seconds.get)
        return _FASTER_RECOMPUTE[key]


class GradientGraph:
    """The gradient of the mean loss over all examples (merged into one batch), built
    with ``create_graph`` and kept, so that each Hessian-vector product is a single
    backward pass through it."""

    def __init__(self, names: list[str], params: list[nn.Parameter], grads: tuple[torch.Tensor, ...], nbytes: int):
        self.names, self.params, self.grads, self.nbytes = names, params, grads, nbytes

    def hvp(self, targets: list[int], vectors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """H_bb v_b for the parameters ``targets`` (indices into ``names``)."""
        # A gradient that does not depend on the parameters (a loss linear in them) has
        # no graph: its rows of H are zero.
        live = [j for j, i in enumerate(targets) if self.grads[i].requires_grad]
        out = [torch.zeros_like(self.params[i]) for i in targets]
        if live:
            products = torch.autograd.grad([self.grads[targets[j]] for j in live],
                                           [self.params[i] for i in targets],
                                           [vectors[j] for j in live], retain_graph=True, allow_unused=True)
            out = [o if p is None else p for o, p in zip(out, products)]
        return tuple(out)

    @classmethod
    def build(cls, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], budget: int | None,
              required: bool = False) -> "GradientGraph | None":
        """The kept graph, or None when it would not fit ``budget`` bytes (an error if
        ``required``). Its size is measured on two examples and scaled to all of them."""
        if not isinstance(batches, Sequence):
            if required:
                raise VitsamError("Hessian method 'graph' needs the batches as a list (they are merged "
                                  "into one); a streamed loader recomputes products per batch instead")
            return None
        examples = sum(len(labels) for _, labels in batches)
        budget = default_graph_memory(next(model.parameters()).device) if budget is None else budget
        images, labels = batches[0]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        with measurement_mode(model), affine_batch_norm(model), torch.enable_grad():
            probe = min(2, len(labels))
            per_example = _saved_bytes(lambda: torch.autograd.grad(
                loss_fn(model(images[:probe]), labels[:probe]), params, create_graph=True), params) / probe
            estimate = int(per_example * examples)
            if estimate > budget:
                if required:
                    raise VitsamError(f"Hessian method 'graph': the kept graph needs about {estimate / 2**30:.2f} "
                                      f"GiB for {examples} examples, over the budget of {budget / 2**30:.2f} GiB; "
                                      "use method 'auto' (recomputes products per batch) or fewer examples")
                return None
            images = torch.cat([x for x, _ in batches])
            labels = torch.cat([y for _, y in batches])
            grads = torch.autograd.grad(loss_fn(model(images), labels), params, create_graph=True)
        return cls([n for n, _ in named], params, grads, estimate)


def _saved_bytes(fn: Callable[[], object], params: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs, parameters
    excluded: the memory a kept graph of that computation holds."""
    seen = {p.untyped_storage().data_ptr() for p in params}
    total = 0

    def pack(tensor: torch.Tensor):
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


def default_graph_memory(device: torch.device) -> int:
    """A quarter of the device's free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 2 * 2**30


class GaussNewtonOperator(CurvatureOperator):
    """v -> G v with G = J^T H_z J, J the Jacobian of the logits z and H_z the Hessian of
    the loss in z (positive semi-definite for convex losses such as cross-entropy). For
    softmax cross-entropy G is also the Fisher information of the model's predictive
    distribution (Martens 2020, Sec. 9.2); the "empirical Fisher" (outer products of the
    per-example gradients at the true labels) is a different matrix. Per batch: J v by
    forward-mode AD, H_z (J v) by a Hessian-vector product in logit space, J^T(.) by
    reverse mode."""

    def _product(self, tangent: dict, images, labels) -> list[torch.Tensor]:
        def logits_of(active: dict) -> torch.Tensor:
            return torch.func.functional_call(self.model, {**self.frozen, **active}, (images,))

        logits, jv = torch.func.jvp(logits_of, (self.active,), (tangent,))
        loss_grad = torch.func.grad(lambda z: self.loss_fn(z, labels))
        _, hjv = torch.func.jvp(loss_grad, (logits.detach(),), (jv,))
        _, pullback = torch.func.vjp(logits_of, self.active)
        return list(pullback(hjv)[0].values())
