"""Matrix-free algorithms on a symmetric operator v -> A v (a Hessian, a Gauss-Newton
matrix, any ``MatVec`` on flat vectors): Lanczos for the extreme eigenvalues and their
eigenvectors, power iteration (the usual Hessian tools' method, for comparison),
Hutchinson's and Hutch++ trace estimators, and stochastic Lanczos quadrature for the
spectral density. Nothing here knows about models: ``hessian`` and ``gauss_newton``
build the operators. ``progress`` (a ``vitsam.progress.Progress``, optional) is advanced
once per product with the operator, so a caller can show one line for several runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from vitsam.progress import Progress

MatVec = Callable[[torch.Tensor], torch.Tensor]


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


class Basis:
    """The orthonormal Lanczos vectors as rows of one buffer on ``storage`` (grown by
    doubling), so that reorthogonalization is two matrix-vector products, not a Python
    loop over the vectors."""

    def __init__(self, dim: int, dtype: torch.dtype, storage, capacity: int = 8):
        self.rows = torch.empty(capacity, dim, dtype=dtype, device=storage)
        self.size = 0

    @property
    def vectors(self) -> torch.Tensor:
        return self.rows[: self.size]  # (m, dim)

    def append(self, v: torch.Tensor) -> None:
        if self.size == len(self.rows):
            grown = torch.empty(2 * len(self.rows), self.rows.shape[1], dtype=self.rows.dtype,
                                device=self.rows.device)
            grown[: self.size] = self.rows
            self.rows = grown
        self.rows[self.size] = v
        self.size += 1

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the basis: classical Gram-Schmidt twice, which
        restores orthogonality to working precision ("twice is enough", Giraud et al. 2005)."""
        Q = self.vectors
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        return w

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """Ritz vectors Q^T S for the columns of S, (dim, k)."""
        S = torch.as_tensor(np.ascontiguousarray(coefficients), dtype=self.rows.dtype, device=self.rows.device)
        return self.vectors.T @ S


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def random_unit(dim: int, seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """A seeded Gaussian direction of norm 1 (the same on every device)."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return _unit(v).to(device, dtype)


def lanczos_tridiagonal(matvec: MatVec, q: torch.Tensor, steps: int,
                        stop: Callable[[Tridiagonal], bool] = lambda t: False,
                        storage="cpu", progress: Progress | None = None) -> tuple[Tridiagonal, Basis]:
    """Lanczos from the unit vector ``q`` with full reorthogonalization. The basis lives
    on ``storage`` (the CPU by default): the operator's device holds O(1) vectors.
    Returns T and the basis (for Ritz vectors)."""
    basis = Basis(q.numel(), q.dtype, storage)
    alphas, betas = [], []
    tri = Tridiagonal([], [], 0.0)
    for _ in range(min(steps, q.numel())):
        basis.append(q.to(storage))
        w = matvec(q).to(storage)
        if progress is not None:
            progress.advance()
        alphas.append(float(w @ basis.vectors[-1]))
        w = basis.orthogonalize(w)
        beta = float(w.norm())
        tri = Tridiagonal(list(alphas), list(betas), beta)
        if beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)) or stop(tri):
            break  # converged, or an invariant subspace was found (all Ritz values exact)
        betas.append(beta)
        q = (w / beta).to(q.device)
    return tri, basis


@dataclass
class RitzEstimates:
    """Ritz values of one end of the spectrum with their a-posteriori error estimates."""
    values: np.ndarray      # ordered from the end inwards (largest first at the top end)
    residuals: np.ndarray   # ||A y_i - theta_i y_i|| = |beta_{m+1} s_{m,i}|
    errors: np.ndarray      # min(residual, residual^2 / gap): see ``ritz_estimates``
    columns: np.ndarray     # their columns in T's eigenvector matrix


def ritz_estimates(tri: Tridiagonal, count: int, top: bool = True) -> tuple[RitzEstimates, np.ndarray]:
    """The ``count`` extreme Ritz values of one end and error estimates for them.

    A residual r_i puts an eigenvalue within r_i of theta_i; when theta_i is separated
    from the rest of the spectrum by a gap g_i, the eigenvalue is within r_i^2 / g_i
    (Kahan-Parlett-Jiang; Saad, *Numerical Methods for Large Eigenvalue Problems*,
    Thm. 3.9). The gap is estimated by the distance to the nearest other Ritz value,
    the usual practical choice. Returns the estimates and T's eigenvector matrix."""
    theta, S = tri.eig()
    residuals_all = np.abs(tri.next_beta * S[-1])
    order = np.arange(len(theta))[::-1] if top else np.arange(len(theta))
    picked = order[: min(count, len(theta))]
    gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) if len(theta) > 1 else np.inf
                     for i in picked])
    res = residuals_all[picked]
    isolated = np.isfinite(gaps) & (gaps > 0)  # with one Ritz value there is no gap to use
    errors = np.where(isolated, np.minimum(res, res ** 2 / np.where(isolated, gaps, 1.0)), res)
    return RitzEstimates(theta[picked], res, errors, picked), S


@dataclass
class LanczosResult:
    eigenvalues: list[float]   # the k largest, descending
    residuals: list[float]     # ||A y_i - theta_i y_i||
    errors: list[float]        # estimated |lambda_i - theta_i| (see ``ritz_estimates``)
    steps: int
    converged: bool            # every requested value's error estimate within tolerance
    tridiagonal: Tridiagonal   # also one sample of stochastic Lanczos quadrature
    bottom: list[float] = field(default_factory=list)            # the smallest, ascending
    bottom_residuals: list[float] = field(default_factory=list)
    bottom_errors: list[float] = field(default_factory=list)
    bottom_converged: bool = True
    eigenvectors: torch.Tensor | None = None         # (dim, k) unit Ritz vectors, on storage
    bottom_eigenvectors: torch.Tensor | None = None  # (dim, bottom)


def lanczos(matvec: MatVec, dim: int, k: int = 1, tol: float = 1e-3, max_steps: int = 100,
            seed: int = 0, device=None, dtype=torch.float32, storage="cpu",
            min_steps: int = 0, start: torch.Tensor | None = None, bottom: int = 0,
            require_bottom: bool = False, eigenvectors: bool = False,
            progress: Progress | None = None) -> LanczosResult:
    """The k largest (algebraic) eigenvalues of a symmetric operator, and the ``bottom``
    smallest from the same Krylov space (the most negative Hessian eigenvalues).

    Stops when each of the k largest Ritz values has an estimated error (residual, or
    residual^2 / gap once the value is isolated; ``ritz_estimates``) of at most
    ``tol * |theta_i|`` -- the accuracy the answer needs, not the stricter residual
    bound alone, which costs extra steps for no change in the value. The smallest Ritz
    values are upper bounds on the smallest eigenvalues (Cauchy interlacing), so a
    negative one proves the operator indefinite; they count as converged when their
    residual (a bound that needs no gap: near the dense bulk of a Hessian spectrum the
    gap estimate is unreliable) is at most ``tol * |theta_i|``, and hold up the stop
    only when ``require_bottom``. No Krylov method can prove that the extreme value has
    been found rather than an interior one; the top end of a trained network's Hessian
    spectrum, with its few large outliers, is found first. ``start``: a warm start
    (e.g. the top eigenvector of a nearby problem), else a seeded Gaussian vector, as
    stochastic Lanczos quadrature needs. ``min_steps`` keeps going after convergence (a
    finer density from the same run)."""
    def ends(tri: Tridiagonal):
        top, S = ritz_estimates(tri, k, top=True)
        low, _ = ritz_estimates(tri, bottom, top=False) if bottom else (None, None)
        return top, low, S

    def converged(top: RitzEstimates, low: RitzEstimates | None) -> tuple[bool, bool]:
        top_ok = len(top.values) >= min(k, dim) and bool(np.all(top.errors <= tol * np.abs(top.values)))
        if low is None:
            return top_ok, True
        return top_ok, len(low.values) >= min(bottom, dim) and bool(np.all(low.residuals <= tol * np.abs(low.values)))

    def stop(tri: Tridiagonal) -> bool:
        if len(tri.alphas) < min_steps:
            return False
        top_ok, low_ok = converged(*ends(tri)[:2])
        return top_ok and (low_ok or not require_bottom)

    q = _unit(start.to(device, dtype)) if start is not None else random_unit(dim, seed, device, dtype)
    tri, basis = lanczos_tridiagonal(matvec, q, lanczos_steps(dim, max_steps, min_steps), stop, storage, progress)
    top, low, S = ends(tri)
    exact = tri.next_beta <= 1e-10 * max(1.0, abs(float(top.values[0])))  # invariant subspace
    top_ok, low_ok = converged(top, low)
    result = LanczosResult(top.values.tolist(), top.residuals.tolist(), top.errors.tolist(), len(tri.alphas),
                           top_ok or exact, tri)
    if low is not None:
        result.bottom, result.bottom_residuals = low.values.tolist(), low.residuals.tolist()
        result.bottom_errors, result.bottom_converged = low.errors.tolist(), low_ok or exact
    if eigenvectors:
        result.eigenvectors = basis.combine(S[:, top.columns])
        if low is not None:
            result.bottom_eigenvectors = basis.combine(S[:, low.columns])
    return result


def lanczos_steps(dim: int, max_steps: int, min_steps: int = 0) -> int:
    """The most steps ``lanczos`` takes (a progress line's total)."""
    return min(max(max_steps, min_steps), dim)


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
        v = _unit(deflate(random_unit(dim, seed + i, device, dtype)))
        value = None
        for _ in range(max_iters):
            hv = deflate(matvec(v))
            calls += 1
            previous, value = value, float(hv @ v)
            v = _unit(hv)
            if previous is not None and abs(value - previous) <= tol * abs(previous):
                break
        found.append(v)
        eigenvalues.append(value)
    return eigenvalues, calls


# --------------------------------------------------------------------------- traces

def rademacher(dim: int, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    return (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(device, dtype)


@dataclass
class TraceEstimate:
    value: float
    stderr: float                   # of the mean over probes (nan with one probe)
    matvecs: int
    segments: list[float] | None = None  # the trace of each diagonal block (``segments``)


def hutchinson_trace(matvec: MatVec, dim: int, samples: int = 50, seed: int = 0,
                     device=None, dtype=torch.float32,
                     segments: Sequence[int] | None = None, progress: Progress | None = None) -> TraceEstimate:
    """tr(A) ~ mean of v^T A v over Rademacher v (Hutchinson 1989), with the standard
    error of that mean. ``segments``: sizes of consecutive pieces of the vector (e.g.
    one per parameter tensor); the same probes then also estimate the trace of each
    diagonal block, E[v_s^T (A v)_s] = tr(A_ss), as PyHessian's per-layer trace does."""
    generator = torch.Generator().manual_seed(seed)
    totals, parts = [], []
    for _ in range(samples):
        v = rademacher(dim, generator, device, dtype)
        product = (v * matvec(v)).double()
        if progress is not None:
            progress.advance()
        totals.append(float(product.sum()))
        if segments is not None:
            parts.append([float(p.sum()) for p in product.split(list(segments))])
    values = np.asarray(totals)
    stderr = values.std(ddof=1) / math.sqrt(samples) if samples > 1 else float("nan")
    per_segment = np.mean(parts, axis=0).tolist() if segments is not None else None
    return TraceEstimate(float(values.mean()), float(stderr), samples, per_segment)


def hutch_pp_trace(matvec: MatVec, dim: int, matvecs: int = 30, seed: int = 0, device=None,
                   dtype=torch.float32, progress: Progress | None = None) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021, Algorithm 1) with ``matvecs``
    products: the trace of A on the span Q of A S (S: m/3 Rademacher vectors) exactly,
    plus Hutchinson's estimate on the rest, (I - QQ^T) A (I - QQ^T), with m/3 more
    probes. Exact when A has rank <= m/3; for the fast-decaying Hessian spectra of
    trained networks far more accurate than Hutchinson at equal cost."""
    generator = torch.Generator().manual_seed(seed)
    third = hutch_pp_products(matvecs) // 3

    def product(v: torch.Tensor) -> torch.Tensor:
        out = matvec(v)
        if progress is not None:
            progress.advance()
        return out

    S = torch.stack([rademacher(dim, generator, device, dtype) for _ in range(third)], dim=1)
    G = torch.stack([rademacher(dim, generator, device, dtype) for _ in range(third)], dim=1)
    AS = torch.stack([product(S[:, j]) for j in range(third)], dim=1)           # (dim, m/3)
    Q, _ = torch.linalg.qr(AS.double())
    Q = Q.to(dtype)
    AQ = torch.stack([product(Q[:, j]) for j in range(third)], dim=1)
    G_perp = G - Q @ (Q.T @ G)
    AG = torch.stack([product(G_perp[:, j]) for j in range(third)], dim=1)
    low_rank = float((Q.double() * AQ.double()).sum())
    residual = (G_perp.double() * AG.double()).sum(dim=0)                     # (m/3,)
    stderr = float(residual.std() / math.sqrt(third)) if third > 1 else float("nan")
    return TraceEstimate(low_rank + float(residual.mean()), stderr, 3 * third)


def hutch_pp_products(matvecs: int) -> int:
    """The products ``hutch_pp_trace`` makes when asked for ``matvecs``: 3 * (m / 3)."""
    return 3 * max(1, matvecs // 3)


# --------------------------------------------------------------------------- densities

def quadrature(tri: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of one Lanczos run from unit v: nodes theta_j (Ritz values) and
    weights tau_j = (first component of T's j-th eigenvector)^2, so that
    v^T f(A) v ~ sum_j tau_j f(theta_j); the weights sum to 1."""
    theta, S = tri.eig()
    return theta, S[0] ** 2


def spectral_density(matvec: MatVec, dim: int, steps: int = 100, vectors: int = 3, seed: int = 0,
                     device=None, dtype=torch.float32, storage="cpu",
                     first: Tridiagonal | None = None,
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): averaging the quadrature of
    ``steps`` Lanczos steps over random unit vectors v estimates the spectral density
    (1/n) sum_i delta(t - lambda_i). ``first``: a finished run from a Gaussian start to
    count as the first vector. Returns nodes and weights, both (vectors, m)."""
    runs = [quadrature(first)] if first is not None else []
    runs += [quadrature(lanczos_tridiagonal(matvec, random_unit(dim, seed + i, device, dtype),
                                            min(steps, dim), storage=storage, progress=progress)[0])
             for i in range(len(runs), vectors)]
    return stack_quadratures(runs)


def stack_quadratures(runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal length: a run that stopped early (an invariant subspace) is padded
    with zero-weight nodes."""
    m = max(len(theta) for theta, _ in runs)
    nodes = [np.pad(theta, (0, m - len(theta)), constant_values=theta[-1]) for theta, _ in runs]
    weights = [np.pad(tau, (0, m - len(tau))) for _, tau in runs]
    return np.asarray(nodes), np.asarray(weights)


def negative_mass(nodes: np.ndarray, weights: np.ndarray, threshold: float = 0.0) -> float:
    """The share of the spectrum below ``-threshold`` by the quadrature: the weights of
    the nodes there, averaged over the probe vectors (Ghorbani et al. 2019's negative
    eigenvalue mass, read off the quadrature rather than a broadened curve)."""
    return float((weights * (nodes < -threshold)).sum(axis=1).mean())


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
    ax.set_title(title or f"Spectral density (SLQ, {nodes.shape[0]} probes x {nodes.shape[1]} steps)")
    return fig
