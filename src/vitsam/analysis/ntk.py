"""The empirical neural tangent kernel and its condition number (Table 1, "NTK kappa").

Theta(x, x') = J(x) J(x')^T with J the Jacobian of the logits with respect to all
trainable parameters, at the current weights, in eval mode. Two kernels:

- ``"sum"``: of the sum of the logits, an (n, n) matrix (one scalar output per input);
- ``"full"``: of every logit, an (nK, nK) matrix ordered input-major (row i*K + k).

Jacobians, kernel and eigenvalues are in float64 by default: kappa of a float32 kernel
cannot be told from infinity above ~1 / (n eps32), about 5e4 for n = 160 outputs, which
is where the paper's values lie. The kernel on many inputs is
too large, so, as the paper does (Table 1's footnote, its Appendix E), kappa is averaged
over diagonal sub-blocks: kernels on disjoint blocks of inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import AnalysisResult, Batch, LossFn, cross_entropy, measurement_mode
from vitsam.errors import VitsamError, unknown_choice

KERNELS = ("sum", "full")


def jacobian(model: nn.Module, inputs: torch.Tensor, chunk: int = 16,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-example Jacobians of the logits, (n, K, P), in ``dtype`` on the model's device,
    parameters in ``named_parameters`` order. Computed with ``vmap(jacrev)`` on chunks of
    ``chunk`` inputs, which bounds the activation memory of the reverse passes. The
    model runs in ``dtype`` on a copy of its parameters and buffers."""
    params = {n: p.detach().to(dtype) for n, p in model.named_parameters() if p.requires_grad}
    others = {n: p.detach().to(dtype) for n, p in model.named_parameters() if not p.requires_grad}
    others.update({n: b.to(dtype) if b.is_floating_point() else b for n, b in model.named_buffers()})
    inputs = inputs.to(dtype)

    def logits_of_one(p: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**p, **others}, (x[None],))[0]  # (C, H, W) -> (K,)

    per_example = torch.func.vmap(torch.func.jacrev(logits_of_one), in_dims=(None, 0))
    rows = []
    with measurement_mode(model):
        for start in range(0, len(inputs), chunk):
            jac = per_example(params, inputs[start:start + chunk])  # name -> (c, K, *shape)
            rows.append(torch.cat([j.flatten(2) for j in jac.values()], dim=2))  # (c, K, P)
    return torch.cat(rows)


def empirical_ntk(model: nn.Module, inputs: torch.Tensor, kernel: str = "sum",
                  chunk: int = 16, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The kernel on ``inputs`` (n, C, H, W), float64, from Jacobians in ``dtype``:
    (n, n) for ``"sum"``, (nK, nK) for ``"full"``."""
    if kernel not in KERNELS:
        raise unknown_choice("NTK kernel", kernel, KERNELS)
    return kernel_from_jacobian(jacobian(model, inputs, chunk, dtype), kernel)


def kernel_from_jacobian(J: torch.Tensor, kernel: str) -> torch.Tensor:
    """J (n, K, P) -> the float64 kernel, (n, n) for "sum" or (nK, nK) for "full"."""
    J = J.double()
    J = J.sum(dim=1) if kernel == "sum" else J.flatten(0, 1)  # (n, P) or (nK, P)
    return J @ J.T


def kappa(kernel_matrix: torch.Tensor, rounding_eps: float = torch.finfo(torch.float64).eps
          ) -> tuple[float, str]:
    """(lambda_max / lambda_min, why it is infinite or ""). A kernel J J^T is positive
    semi-definite; an eigenvalue at or below the rounding level of the Jacobians
    (lambda_max * size * eps) means the kernel is singular (e.g. more outputs than
    parameters, or repeated inputs), and kappa is reported as inf."""
    eigenvalues = torch.linalg.eigvalsh(kernel_matrix.double())
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    floor = high * len(eigenvalues) * rounding_eps
    if low <= floor:
        return math.inf, (f"lambda_min = {low:.3g} is not above the rounding level {floor:.3g} "
                          f"of a kernel with lambda_max = {high:.3g}: the kernel is singular")
    return high / low, ""


def block_condition_numbers(model: nn.Module, inputs: torch.Tensor, block_size: int | None = None,
                            kernel: str = "sum", chunk: int = 16,
                            dtype: torch.dtype = torch.float64) -> list[tuple[float, str]]:
    """kappa (and why it is inf, if it is) of the kernel on each disjoint block of
    ``block_size`` consecutive inputs (all inputs in one block when None)."""
    block_size = block_size or len(inputs)
    if len(inputs) < block_size or block_size < 2:
        raise VitsamError(f"NTK blocks need 2 <= block_size <= number of inputs; got block_size="
                          f"{block_size} for {len(inputs)} inputs")
    eps = torch.finfo(dtype).eps  # the Jacobians' precision
    return [kappa(empirical_ntk(model, inputs[s:s + block_size], kernel, chunk, dtype), eps)
            for s in range(0, len(inputs) - block_size + 1, block_size)]


def condition_number(model: nn.Module, inputs: torch.Tensor, block_size: int | None = None,
                     kernel: str = "sum", chunk: int = 16, dtype: torch.dtype = torch.float64) -> float:
    """The NTK condition number averaged over disjoint diagonal blocks of ``block_size``
    inputs (inf if any block's kernel is singular; see ``block_condition_numbers``)."""
    values = [k for k, _ in block_condition_numbers(model, inputs, block_size, kernel, chunk, dtype)]
    return float(np.mean(values))


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf: null, with the reason beside it


@dataclass
class NTKConditioning:
    """kappa of the sum-of-logits and the full-logit kernels, averaged over ``blocks``
    disjoint blocks of ``block_size`` training images."""
    name: ClassVar[str] = "ntk"
    blocks: int = 4
    block_size: int = 16
    kernels: tuple = KERNELS
    chunk: int = 16

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        for kernel in self.kernels:
            if kernel not in KERNELS:
                raise unknown_choice("NTK kernel", kernel, KERNELS)
        images = torch.cat([x for x, _ in batches])[: self.blocks * self.block_size]
        if len(images) < max(2, self.block_size):
            raise VitsamError(f"ntk: block_size={self.block_size} needs at least that many images "
                              f"(and 2), got {len(images)}")
        per_block: dict[str, list] = {kernel: [] for kernel in self.kernels}
        for start in range(0, len(images) - self.block_size + 1, self.block_size):
            J = jacobian(model, images[start:start + self.block_size], self.chunk)  # one per block
            for kernel in self.kernels:
                per_block[kernel].append(kappa(kernel_from_jacobian(J, kernel)))
        metrics = {"block_size": self.block_size, "blocks": len(images) // self.block_size}
        for kernel, values in per_block.items():
            metrics[kernel] = {"kappa": _json_number(float(np.mean([k for k, _ in values]))),
                               "per_block": [_json_number(k) for k, _ in values],
                               "why_inf": sorted({why for _, why in values if why})}
        return AnalysisResult(metrics)
