"""The empirical neural tangent kernel and its condition number (Table 1, "NTK kappa").

With J_k(x) the Jacobian of logit k with respect to all trainable parameters (eval mode,
current weights), three kernels on n inputs:

- ``"trace"`` (the headline): sum_k J_k J_k^T, (n, n): the full kernel's trace over the
  logits, the empirical NTK of neural-tangents (``trace_axes=(-1,)``) and of the PyTorch
  NTK tutorial;
- ``"full"``: every logit, (nK, nK), ordered input-major (row i*K + k); only where its
  Jacobian blocks and the matrix fit the memory budget;
- ``"sum"``: (sum_k J_k)(sum_k J_k)^T, (n, n), the kernel of the summed logits. Softmax
  cross-entropy is blind to the direction that adds the same amount to every logit, so
  this kernel weighs a direction training never uses; kept for comparison only.

Memory: the Jacobian is never held whole (for ViT-B/16 with 1000 classes it is ~0.7 TB
per image in float64). It is computed in blocks of (inputs, a chunk of the logits, a
chunk of the parameter tensors) sized to ``max_bytes``, and each block's products are
added to the kernels. Jacobians, kernels and eigenvalues are in float64 by default:
kappa of a float32 kernel cannot be told from infinity above ~1 / (n eps32).

The kernel on many inputs is too large, so, as the paper does (Table 1's footnote, its
Appendix E), kappa is computed on diagonal sub-blocks (kernels on disjoint blocks of
inputs) and summarized over them: mean (the paper's average), median and the
standard error of the mean, with every block's value kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import AnalysisResult, Batch, LossFn, cross_entropy, measurement_mode
from vitsam.analysis.operators import default_graph_memory
from vitsam.errors import VitsamError, unknown_choice
from vitsam.progress import track

KERNELS = ("trace", "full", "sum")
HEADLINE_KERNEL = "trace"
KERNEL_DEFINITIONS = {
    "trace": "sum_k J_k J_k^T (n x n): the empirical NTK traced over the logits",
    "full": "J J^T over every logit (nK x nK)",
    "sum": "(sum_k J_k)(sum_k J_k)^T (n x n): the kernel of the summed logits",
}


def _check_kernels(kernels: Sequence[str]) -> None:
    for kernel in kernels:
        if kernel not in KERNELS:
            raise unknown_choice("NTK kernel", kernel, KERNELS)


class _Jacobians:
    """Blocks of per-example Jacobians of the logits: (n, c, p) for a chunk of c logits
    and the parameter tensors ``names`` (p entries), in ``dtype``. The model runs on a
    ``dtype`` copy of its parameters and buffers through ``functional_call``."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, chunk: int, dtype: torch.dtype):
        self.model, self.chunk = model, chunk
        self.params = {n: p.detach().to(dtype) for n, p in model.named_parameters() if p.requires_grad}
        self.others = {n: p.detach().to(dtype) for n, p in model.named_parameters() if not p.requires_grad}
        self.others.update({n: b.to(dtype) if b.is_floating_point() else b for n, b in model.named_buffers()})
        self.inputs = inputs.to(dtype)
        with torch.no_grad(), measurement_mode(model):
            self.num_outputs = torch.func.functional_call(model, {**self.params, **self.others},
                                                          (self.inputs[:1],)).shape[-1]

    def block(self, names: Sequence[str], classes: slice) -> torch.Tensor:
        chosen = {n: self.params[n] for n in names}
        rest = {**self.others, **{n: p for n, p in self.params.items() if n not in chosen}}

        def logits_of_one(p: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.model, {**rest, **p}, (x[None],))[0, classes]  # (c,)

        per_example = torch.func.vmap(torch.func.jacrev(logits_of_one), in_dims=(None, 0))
        rows = []
        with measurement_mode(self.model):
            for start in range(0, len(self.inputs), self.chunk):
                jac = per_example(chosen, self.inputs[start:start + self.chunk])  # name -> (b, c, *shape)
                rows.append(torch.cat([jac[n].flatten(2) for n in names], dim=2))  # (b, c, p)
        return torch.cat(rows)


def _parameter_chunks(sizes: dict[str, int], per_entry_bytes: int, budget: int) -> list[list[str]]:
    """Consecutive parameter tensors grouped so that each group's Jacobian block
    (``per_entry_bytes`` per parameter entry) fits ``budget``; a tensor too large for
    the budget on its own forms its own group."""
    chunks, current, used = [], [], 0
    for name, size in sizes.items():
        if current and used + size * per_entry_bytes > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += size * per_entry_bytes
    return chunks + [current] if current else chunks


def ntk_kernels(model: nn.Module, inputs: torch.Tensor, kernels: Sequence[str] = (HEADLINE_KERNEL,),
                chunk: int = 16, dtype: torch.dtype = torch.float64,
                max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """The requested kernels on ``inputs`` (n, C, H, W), float64, accumulated over
    Jacobian blocks of at most ``max_bytes`` (default: a quarter of the free memory).
    The full kernel needs all logits of a parameter tensor in one block: a clear error
    says so when that, or the (nK, nK) matrix, is over the budget."""
    _check_kernels(kernels)
    jac = _Jacobians(model, inputs, chunk, dtype)
    n, K = len(inputs), jac.num_outputs
    itemsize = torch.finfo(dtype).bits // 8
    budget = max_bytes or default_graph_memory(next(model.parameters()).device)
    sizes = {name: p.numel() for name, p in jac.params.items()}
    largest = max(sizes.values())
    if "full" in kernels:
        need = max(n * K * largest * itemsize, (n * K) ** 2 * 8)
        if need > budget:
            raise VitsamError(f"the full NTK on {n} inputs x {K} logits needs {need / 2**30:.2f} GiB (a Jacobian "
                              f"block of the largest parameter tensor, {largest} entries, or the {n * K}x{n * K} "
                              f"matrix), over the budget of {budget / 2**30:.2f} GiB: use kernel 'trace', fewer "
                              "inputs per block, or a larger max_bytes")
        classes_per_block = K
        chunks = _parameter_chunks(sizes, n * K * itemsize, budget)
    else:
        # Each parameter chunk costs one backward pass per (input, logit): first as few
        # chunks as one logit at a time allows, then as many logits per block as fit.
        chunks = _parameter_chunks(sizes, n * itemsize, budget)
        widest = max(sum(sizes[name] for name in chunk) for chunk in chunks)
        classes_per_block = int(max(1, min(K, budget // (n * widest * itemsize))))
    device = next(model.parameters()).device
    out = {"trace": torch.zeros(n, n, dtype=torch.float64, device=device) if "trace" in kernels else None,
           "full": torch.zeros(n * K, n * K, dtype=torch.float64, device=device) if "full" in kernels else None,
           "sum": torch.zeros(n, n, dtype=torch.float64, device=device) if "sum" in kernels else None}
    for names in chunks:
        summed = None
        for start in range(0, K, classes_per_block):
            J = jac.block(names, slice(start, start + classes_per_block)).double()  # (n, c, p)
            if out["trace"] is not None:
                out["trace"] += torch.einsum("ikp,jkp->ij", J, J)
            if out["full"] is not None:
                flat = J.flatten(0, 1)  # (n * K, p), input-major
                out["full"] += flat @ flat.T
            if out["sum"] is not None:
                summed = J.sum(dim=1) if summed is None else summed + J.sum(dim=1)  # (n, p)
        if summed is not None:
            out["sum"] += summed @ summed.T
    return {kernel: out[kernel].cpu() for kernel in kernels}


def empirical_ntk(model: nn.Module, inputs: torch.Tensor, kernel: str = HEADLINE_KERNEL, chunk: int = 16,
                  dtype: torch.dtype = torch.float64, max_bytes: int | None = None) -> torch.Tensor:
    """One kernel on ``inputs``: (n, n) for "trace" and "sum", (nK, nK) for "full"."""
    return ntk_kernels(model, inputs, (kernel,), chunk, dtype, max_bytes)[kernel]


def kappa(kernel_matrix: torch.Tensor, rounding_eps: float = torch.finfo(torch.float64).eps
          ) -> tuple[float, str, float, float]:
    """(lambda_max / lambda_min, why it is infinite or "", lambda_max, lambda_min). A
    kernel J J^T is positive semi-definite; an eigenvalue at or below the rounding level
    of the Jacobians (lambda_max * size * eps) means the kernel is singular (e.g. more
    outputs than parameters, or repeated inputs), and kappa is reported as inf."""
    eigenvalues = torch.linalg.eigvalsh(kernel_matrix.double())
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    floor = high * len(eigenvalues) * rounding_eps
    if low <= floor:
        return math.inf, (f"lambda_min = {low:.3g} is not above the rounding level {floor:.3g} "
                          f"of a kernel with lambda_max = {high:.3g}: the kernel is singular"), high, low
    return high / low, "", high, low


def block_condition_numbers(model: nn.Module, inputs: torch.Tensor, block_size: int | None = None,
                            kernel: str = HEADLINE_KERNEL, chunk: int = 16, dtype: torch.dtype = torch.float64,
                            max_bytes: int | None = None) -> list[tuple[float, str]]:
    """kappa (and why it is inf, if it is) of the kernel on each disjoint block of
    ``block_size`` consecutive inputs (all inputs in one block when None)."""
    block_size = block_size or len(inputs)
    _check_block_size(block_size, len(inputs))
    eps = torch.finfo(dtype).eps  # the Jacobians' precision
    return [kappa(empirical_ntk(model, inputs[s:s + block_size], kernel, chunk, dtype, max_bytes), eps)[:2]
            for s in range(0, len(inputs) - block_size + 1, block_size)]


def _check_block_size(block_size: int, available: int) -> None:
    if available < block_size or block_size < 2:
        raise VitsamError(f"NTK blocks need 2 <= block_size <= number of inputs; got block_size="
                          f"{block_size} for {available} inputs")


def condition_number(model: nn.Module, inputs: torch.Tensor, block_size: int | None = None,
                     kernel: str = HEADLINE_KERNEL, chunk: int = 16, dtype: torch.dtype = torch.float64) -> float:
    """The NTK condition number averaged over disjoint diagonal blocks of ``block_size``
    inputs (inf if any block's kernel is singular; see ``block_condition_numbers``)."""
    values = [k for k, _ in block_condition_numbers(model, inputs, block_size, kernel, chunk, dtype)]
    return float(np.mean(values))


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf: null, with the reason beside it


def summarize(per_block: Sequence[tuple[float, str, float, float]]) -> dict:
    """Mean (the paper's average over blocks), median and standard error of the mean of
    kappa over blocks, with every block's kappa and extreme eigenvalues."""
    values = np.array([k for k, *_ in per_block], dtype=float)
    finite = bool(np.all(np.isfinite(values)))
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if finite and len(values) > 1 else math.nan
    return {"kappa": _json_number(float(values.mean())), "kappa_median": _json_number(float(np.median(values))),
            "kappa_stderr": _json_number(stderr), "per_block": [_json_number(k) for k in values.tolist()],
            "lambda_max": [high for _, _, high, _ in per_block], "lambda_min": [low for *_, low in per_block],
            "why_inf": sorted({why for _, why, *_ in per_block if why})}


@dataclass
class NTKConditioning:
    """kappa of the NTK on ``blocks`` disjoint blocks of ``block_size`` training images,
    for each kernel of ``kernels`` (the trace kernel is the headline; the full kernel is
    skipped with the reason where it does not fit ``max_bytes``, 0 = a quarter of the
    free memory)."""
    name: ClassVar[str] = "ntk"
    blocks: int = 16
    block_size: int = 16
    kernels: tuple = ("trace", "full")
    chunk: int = 16
    max_bytes: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        _check_kernels(self.kernels)
        images = torch.cat([x for x, _ in batches])[: self.blocks * self.block_size]
        _check_block_size(self.block_size, len(images))
        kernels, skipped = list(self.kernels), {}
        per_block: dict[str, list] = {kernel: [] for kernel in kernels}
        eps = torch.finfo(torch.float64).eps
        starts = range(0, len(images) - self.block_size + 1, self.block_size)
        for start in track(starts, label=f"{self.name} blocks", unit="blocks"):
            block = images[start:start + self.block_size]
            try:
                matrices = ntk_kernels(model, block, kernels, self.chunk, max_bytes=self.max_bytes or None)
            except VitsamError as error:
                if "full" not in kernels:
                    raise
                skipped["full"] = str(error)
                kernels.remove("full")
                matrices = ntk_kernels(model, block, kernels, self.chunk, max_bytes=self.max_bytes or None)
            for kernel in kernels:
                per_block[kernel].append(kappa(matrices[kernel], eps))
        metrics = {"headline_kernel": HEADLINE_KERNEL, "block_size": self.block_size,
                   "blocks": len(images) // self.block_size,
                   "kernel_definitions": {k: KERNEL_DEFINITIONS[k] for k in self.kernels}}
        for kernel in self.kernels:
            metrics[kernel] = {"skipped": skipped[kernel]} if kernel in skipped else summarize(per_block[kernel])
        return AnalysisResult(metrics)
