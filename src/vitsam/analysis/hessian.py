"""The Hessian of the training loss: top eigenvalues, trace, spectral density and the
paper's per-block table (Table 1's "Hessian lambda_max" and the per-block table).

The loss is the size-weighted mean over a fixed list of un-augmented batches with the
model in eval mode (BatchNorm uses running statistics). Hessian-vector products are
computed per batch and summed, so only one batch's graph lives at a time:

- ``"jvp"``: forward-over-reverse, ``jvp`` of ``grad`` with ``torch.func``;
- ``"double_backward"``: reverse-over-reverse, the approach of the usual Hessian tools;
- ``"auto"`` (default): whichever of the two is faster for this model, timed on a few
  examples at the first product. Neither wins everywhere: on a 2-core CPU (one thread)
  double backward was ~1.5x faster for the tiny ViT and even with forward-over-reverse
  for the tiny ResNet; see benchmarks/bench_hessian.py.

Both run through the explicit attention path (``measurement_mode``). Eigenvalues come
from Lanczos with full reorthogonalization (Lanczos vectors kept on the CPU unless asked
otherwise, so accelerator memory stays at a few parameter-sized vectors) or from power
iteration; the trace from Hutchinson's estimator; the spectral density from stochastic
Lanczos quadrature (Ghorbani et al. 2019) with Gaussian broadening.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import (AnalysisResult, Batch, LossFn, batch_weights, cross_entropy,
                             measurement_mode, take)
from vitsam.errors import unknown_choice
from vitsam.models import capture

HVP_METHODS = ("auto", "jvp", "double_backward")
EIGEN_METHODS = ("lanczos", "power")
MatVec = Callable[[torch.Tensor], torch.Tensor]


class HessianOperator:
    """v -> H v for the loss over ``batches``, restricted to ``params`` (the diagonal
    block of a parameter group; all trainable parameters when None). Vectors are flat,
    in the order of ``model.named_parameters()``."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch],
                 params: Sequence[nn.Parameter] | None = None, method: str = "auto"):
        if method not in HVP_METHODS:
            raise unknown_choice("Hessian-vector product method", method, HVP_METHODS)
        chosen = {id(p) for p in params} if params is not None else None
        self.model, self.loss_fn, self.batches, self.method = model, loss_fn, list(batches), method
        self.weights = batch_weights(self.batches)
        self.active = {n: p.detach() for n, p in model.named_parameters()
                       if (p.requires_grad if chosen is None else id(p) in chosen)}
        # Parameters outside the block are constants: detached, so no graph reaches them.
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in self.active}
        self.dim = sum(p.numel() for p in self.active.values())
        first = next(iter(self.active.values()))
        self.device, self.dtype = first.device, first.dtype
        self.calls = 0

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = flat.split([p.numel() for p in self.active.values()])
        return {n: piece.view_as(p) for (n, p), piece in zip(self.active.items(), pieces)}

    def _loss(self, active: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(self.model, {**self.frozen, **active}, (images,))
        return self.loss_fn(logits, labels)

    def _hvp_jvp(self, tangent: dict, images, labels) -> list[torch.Tensor]:
        grad_fn = torch.func.grad(self._loss)
        _, hv = torch.func.jvp(lambda p: grad_fn(p, images, labels), (self.active,), (tangent,))
        return list(hv.values())

    def _hvp_double_backward(self, tangent: dict, images, labels) -> list[torch.Tensor]:
        active = {n: p.clone().requires_grad_(True) for n, p in self.active.items()}
        grads = torch.autograd.grad(self._loss(active, images, labels), list(active.values()),
                                    create_graph=True)
        return list(torch.autograd.grad(grads, list(active.values()), list(tangent.values())))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """v: flat (dim,) -> H v: flat (dim,)."""
        self.calls += 1
        tangent = self._split(v.to(self.device, self.dtype))
        out = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with measurement_mode(self.model), torch.enable_grad():
            if self.method == "auto":
                self.method = self._faster_method(tangent)
            hvp = self._hvp_jvp if self.method == "jvp" else self._hvp_double_backward
            for weight, (images, labels) in zip(self.weights, self.batches):
                out += weight * torch.cat([h.reshape(-1) for h in hvp(tangent, images, labels)])
        return out

    def _faster_method(self, tangent: dict, examples: int = 8) -> str:
        """Time both products on a few examples, twice each (the first call warms up)."""
        images, labels = self.batches[0]
        images, labels = images[:examples], labels[:examples]
        seconds = {}
        for method, hvp in (("jvp", self._hvp_jvp), ("double_backward", self._hvp_double_backward)):
            for _ in range(2):
                start = time.perf_counter()
                hvp(tangent, images, labels)
                seconds[method] = time.perf_counter() - start
        return min(seconds, key=seconds.get)


# --------------------------------------------------------------------------- Lanczos

@dataclass
class Tridiagonal:
    """The Lanczos recurrence's T (alphas on the diagonal, betas beside it) and the
    norm of the next residual, which bounds the Ritz values' errors."""
    alphas: list[float]
    betas: list[float]
    next_beta: float

    def eig(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of T (columns)."""
        T = np.diag(self.alphas) + np.diag(self.betas, 1) + np.diag(self.betas, -1)
        return _eigh_single_thread(T)


def _eigh_single_thread(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # T is tiny (m <= a few hundred) and factored after every Lanczos step: a threaded
    # LAPACK call spends far longer waking threads than computing, badly so on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        values, vectors = torch.linalg.eigh(torch.from_numpy(matrix))
    finally:
        torch.set_num_threads(threads)
    return values.numpy(), vectors.numpy()


def _random_unit(dim: int, seed: int, device, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(device, dtype)


def lanczos_tridiagonal(matvec: MatVec, q: torch.Tensor, steps: int,
                        stop: Callable[[Tridiagonal], bool] = lambda t: False,
                        storage: str | torch.device = "cpu") -> Tridiagonal:
    """Lanczos from the unit vector ``q``, with full reorthogonalization (modified
    Gram-Schmidt, twice: Parlett's "twice is enough"). The Lanczos vectors live on
    ``storage`` (CPU by default) and only as many as steps taken: the model's device
    holds O(1) parameter-sized vectors."""
    basis: list[torch.Tensor] = []
    alphas, betas = [], []
    for _ in range(min(steps, q.numel())):
        basis.append(q.to(storage))
        w = matvec(q).to(storage)
        alphas.append(float(w @ basis[-1]))
        for _ in range(2):
            for u in basis:
                w -= (u @ w) * u
        beta = float(w.norm())
        tri = Tridiagonal(list(alphas), list(betas), beta)
        if beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)) or stop(tri):
            return tri  # converged, or an invariant subspace was found (all Ritz values exact)
        betas.append(beta)
        q = (w / beta).to(q.device)
    return tri


@dataclass
class LanczosResult:
    eigenvalues: list[float]   # the k largest, descending
    residuals: list[float]     # |beta_{m+1} s_{m,i}| = ||H y_i - theta_i y_i||
    steps: int
    converged: bool
    tridiagonal: Tridiagonal   # also one sample of stochastic Lanczos quadrature


def lanczos(matvec: MatVec, dim: int, k: int = 1, tol: float = 1e-3, max_steps: int = 100,
            seed: int = 0, device=None, dtype=torch.float32, storage="cpu",
            min_steps: int = 0) -> LanczosResult:
    """The k largest (algebraic) eigenvalues of a symmetric operator.

    Convergence criterion: every one of the k largest Ritz values theta_i has residual
    ||H y_i - theta_i y_i||_2 = |beta_{m+1} s_{m,i}| <= tol * |theta_i|, where s_i is the
    eigenvector of the m x m tridiagonal T. For a symmetric H this puts a true eigenvalue
    within relative distance tol of each theta_i (Bauer-Fike / Kahan-Parlett bound); the
    error of theta_i itself is usually far smaller (of order residual^2 / spectral gap).
    ``min_steps`` keeps going after convergence, for a finer spectral density from the
    same run (the start vector is Gaussian, as SLQ needs)."""
    def residuals(tri: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
        theta, S = tri.eig()
        top = slice(-1, -min(k, len(theta)) - 1, -1)  # largest first
        return theta[top], np.abs(tri.next_beta * S[-1, top])

    def converged(tri: Tridiagonal) -> bool:
        theta, res = residuals(tri)
        return len(theta) >= min(k, dim) and bool(np.all(res <= tol * np.abs(theta)))

    def stop(tri: Tridiagonal) -> bool:
        return len(tri.alphas) >= min_steps and converged(tri)

    q = _random_unit(dim, seed, device, dtype)
    tri = lanczos_tridiagonal(matvec, q, min(max(max_steps, min_steps), dim), stop, storage)
    theta, res = residuals(tri)
    return LanczosResult(theta.tolist(), res.tolist(), len(tri.alphas),
                         converged(tri) or bool(tri.next_beta <= 1e-10 * max(1.0, abs(theta[0]))), tri)


def power_iteration(matvec: MatVec, dim: int, k: int = 1, tol: float = 1e-3,
                    max_iters: int = 100, seed: int = 0, device=None,
                    dtype=torch.float32) -> tuple[list[float], int]:
    """The k eigenvalues largest in magnitude, one after the other, each on the operator
    deflated by projecting out the eigenvectors already found. Stops an eigenvalue when
    the Rayleigh quotient changes by less than tol relative to its value (the criterion
    of the usual Hessian tools, e.g. PyHessian). Returns (eigenvalues, matvec count)."""
    found: list[torch.Tensor] = []
    eigenvalues, calls = [], 0

    def deflate(v: torch.Tensor) -> torch.Tensor:
        for u in found:
            v = v - (u @ v) * u
        return v

    for i in range(min(k, dim)):
        v = deflate(_random_unit(dim, seed + i, device, dtype))
        v = v / v.norm()
        value = None
        for _ in range(max_iters):
            hv = deflate(matvec(v))
            calls += 1
            previous, value = value, float(hv @ v)
            v = hv / hv.norm()
            if previous is not None and abs(value - previous) <= tol * abs(previous):
                break
        found.append(v)
        eigenvalues.append(value)
    return eigenvalues, calls


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1,
                    params: Sequence[nn.Parameter] | None = None, method: str = "lanczos",
                    tol: float = 1e-3, max_steps: int = 100, seed: int = 0,
                    hvp: str = "auto") -> list[float]:
    """The top-k Hessian eigenvalues of the loss over ``batches``, descending.

    ``params`` restricts the Hessian to a parameter group (its diagonal block, e.g.
    ``model.parameter_groups()["attention"]``). ``method="lanczos"`` gives the k largest
    algebraic eigenvalues, converged as ``lanczos`` states; ``"power"`` the k largest in
    magnitude by power iteration. Near a minimum both agree on lambda_max."""
    if method not in EIGEN_METHODS:
        raise unknown_choice("eigenvalue method", method, EIGEN_METHODS)
    op = HessianOperator(model, loss_fn, batches, params, hvp)
    if method == "power":
        values, _ = power_iteration(op, op.dim, k, tol, max_steps, seed, op.device, op.dtype)
        return sorted(values, reverse=True)
    return lanczos(op, op.dim, k, tol, max_steps, seed, op.device, op.dtype).eigenvalues


def hutchinson_trace(matvec: MatVec, dim: int, samples: int = 50, seed: int = 0,
                     device=None, dtype=torch.float32) -> tuple[float, float]:
    """tr(H) ~ mean of v^T H v over Rademacher v (Hutchinson 1989).
    Returns (estimate, its standard error)."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        v = (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(device, dtype)
        values.append(float(v @ matvec(v)))
    values = np.asarray(values)
    stderr = values.std(ddof=1) / math.sqrt(samples) if samples > 1 else float("nan")
    return float(values.mean()), float(stderr)


def quadrature(tri: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of one Lanczos run from unit v: nodes theta_j (Ritz values) and
    weights tau_j = (first component of T's j-th eigenvector)^2, so that
    v^T f(H) v ~ sum_j tau_j f(theta_j); the weights sum to 1."""
    theta, S = tri.eig()
    return theta, S[0] ** 2


def spectral_density(matvec: MatVec, dim: int, steps: int = 30, vectors: int = 2, seed: int = 0,
                     device=None, dtype=torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): averaging the quadrature of
    ``steps`` Lanczos steps over random unit vectors v estimates the spectral density
    (1/n) sum_i delta(t - lambda_i). Returns nodes and weights, both (vectors, m)."""
    runs = [quadrature(lanczos_tridiagonal(matvec, _random_unit(dim, seed + i, device, dtype),
                                           min(steps, dim)))
            for i in range(vectors)]
    return stack_quadratures(runs)


def stack_quadratures(runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal length: a run that stopped early (an invariant subspace) is padded
    with zero-weight nodes."""
    m = max(len(theta) for theta, _ in runs)
    nodes = [np.pad(theta, (0, m - len(theta)), constant_values=theta[-1]) for theta, _ in runs]
    weights = [np.pad(tau, (0, m - len(tau))) for _, tau in runs]
    return np.asarray(nodes), np.asarray(weights)


def density_curve(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                  sigma: float) -> np.ndarray:
    """The SLQ density on ``grid``, each node broadened by a Gaussian of width sigma."""
    diff = grid[None, None, :] - nodes[..., None]  # (vectors, m, grid)
    kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (weights[..., None] * kernel).sum(axis=1).mean(axis=0)


def plot_density(nodes: np.ndarray, weights: np.ndarray, title: str = ""):
    import matplotlib.pyplot as plt

    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-12)
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 1000)
    density = density_curve(nodes, weights, grid, sigma=0.01 * span)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(grid, density + 1e-12)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "Hessian spectral density (SLQ)")
    return fig


# --------------------------------------------------------------------------- analyzers

def first_middle_last(num_blocks: int) -> tuple[int, int, int]:
    """First, middle and last block, 1-based: the paper's Block1 / Block6 / Block12 of 12
    (the middle rounds up, so 3 blocks give 1 / 2 / 3)."""
    return 1, (num_blocks + 1) // 2, num_blocks


def representative_blocks(num_blocks: int) -> list[int]:
    """The distinct blocks of ``first_middle_last``."""
    return sorted(set(first_middle_last(num_blocks)))


def block_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The per-block table's columns, from the model contract: embedding, attention or
    token-mixing, MLP or channel-mixing, first / middle / last block."""
    groups = model.parameter_groups()
    wanted = ["embedding", "attention", "token_mixing", "mlp", "channel_mixing"]
    wanted += [f"block{k}" for k in representative_blocks(len(model.blocks))]
    return {name: groups[name] for name in wanted if groups.get(name)}


@torch.no_grad()
def activation_norms(model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
    """||a_k||_2 for the representative blocks: the L2 norm of block k's output for one
    example (over all its tokens / channels / positions), averaged over the examples."""
    blocks = representative_blocks(len(model.blocks))
    norms = dict.fromkeys(blocks, 0.0)
    with measurement_mode(model):
        for weight, (images, _) in zip(batch_weights(batches), batches):
            with capture(model, attention=False, blocks=True, hidden=False) as rec:
                model(images)
            for k in blocks:
                out = rec.blocks[k - 1]
                norms[k] += weight * float(out.reshape(len(out), -1).norm(dim=1).mean())
    return {f"a{k}": v for k, v in norms.items()}


def weight_norm(model: nn.Module) -> float:
    """||w||_2 over all parameters."""
    return float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in model.parameters())))


@dataclass
class HessianAnalysis:
    """Table 1's lambda_max and the per-block table, plus the trace and the density.

    Whole model: the top-k eigenvalues by Lanczos (run for at least ``density_steps``
    steps, whose quadrature is the first SLQ sample of the spectral density; more with
    ``density_vectors`` > 1) and Hutchinson's trace. Per block (``blocks=True``, vitsam
    models): lambda_max of the diagonal blocks of ``block_groups``, ||w||_2 and the
    ||a_k||_2 of ``activation_norms``. Defaults are sized for the tiny demo models on a
    2-core CPU; ``tol`` bounds the relative Lanczos residual (see ``lanczos``)."""
    name: ClassVar[str] = "hessian"
    examples: int = 128
    top_k: int = 1
    tol: float = 1e-2
    max_steps: int = 40
    density_steps: int = 12
    density_vectors: int = 1
    trace_samples: int = 4
    blocks: bool = True
    block_max_steps: int = 8
    hvp: str = "auto"
    seed: int = 0

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        batches = take(batches, self.examples)
        op = HessianOperator(model, loss_fn, batches, method=self.hvp)
        where = dict(device=op.device, dtype=op.dtype)
        top = lanczos(op, op.dim, self.top_k, self.tol, self.max_steps, self.seed,
                      min_steps=self.density_steps, **where)
        extra = [quadrature(lanczos_tridiagonal(op, _random_unit(op.dim, self.seed + i, **where),
                                                self.density_steps))
                 for i in range(1, self.density_vectors)]
        nodes, weights = stack_quadratures([quadrature(top.tridiagonal)] + extra)
        trace, trace_err = hutchinson_trace(op, op.dim, self.trace_samples, self.seed, **where)
        metrics = {
            "lambda_max": top.eigenvalues[0], "top_eigenvalues": top.eigenvalues,
            "lanczos_residuals": top.residuals, "lanczos_steps": top.steps, "converged": top.converged,
            "trace": trace, "trace_stderr": trace_err,
            "num_parameters": op.dim, "num_examples": sum(len(y) for _, y in batches), "hvp": op.method,
            "density": {"nodes": nodes.tolist(), "weights": weights.tolist()},
        }
        if self.blocks and hasattr(model, "parameter_groups"):
            metrics["blocks"] = self.block_table(model, batches, loss_fn, top.eigenvalues[0], op.method)
        return AnalysisResult(metrics, {"hessian_density": plot_density(nodes, weights)})

    def block_table(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
                    whole: float, hvp: str) -> dict:
        """The paper's per-block table (its "Whole" column is the whole-model lambda_max)."""
        lambdas, steps = {}, {}
        for name, params in block_groups(model).items():
            op = HessianOperator(model, loss_fn, batches, params, hvp)
            result = lanczos(op, op.dim, 1, self.tol, self.block_max_steps, self.seed,
                             device=op.device, dtype=op.dtype)
            lambdas[name], steps[name] = result.eigenvalues[0], result.steps
        return {"lambda_max": {**lambdas, "whole": whole}, "lanczos_steps": steps,
                "weight_norm": weight_norm(model),
                "activation_norm": activation_norms(model, batches), "num_blocks": len(model.blocks)}
