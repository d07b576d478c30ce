"""The Hessian of the training loss: Table 1's "Hessian lambda_max" with its spread over
disjoint data, the paper's per-block table, the most negative eigenvalue, the trace
(whole and per layer), the spectral density, and the loss along the top eigenvectors.

The operators (``vitsam.analysis.operators``) and the matrix-free algorithms
(``vitsam.analysis.curvature``) live apart; this module runs them on a model. The
same analyzer on the generalized Gauss-Newton matrix is ``GaussNewtonAnalysis``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.analysis import (AnalysisResult, Batch, LossFn, batch_weights, cross_entropy, disjoint_subsets,
                             evaluate, measurement_mode, spread, take)
from vitsam.analysis.curvature import (LanczosResult, hutch_pp_products, hutch_pp_trace, hutchinson_trace, lanczos,
                                       lanczos_steps, negative_mass, plot_density, power_iteration, random_unit,
                                       spectral_density)
from vitsam.analysis.operators import GaussNewtonOperator, HessianOperator
from vitsam.errors import unknown_choice
from vitsam.models import capture
from vitsam.progress import Progress, track

EIGEN_METHODS = ("lanczos", "power")


START_VECTORS = ("gradient", "random")


def start_vector(op, start: str | torch.Tensor, seed: int) -> torch.Tensor | None:
    """Lanczos's first vector: a given tensor, a seeded Gaussian ("random", None here),
    or "gradient": the unit gradient plus a unit Gaussian vector. A trained network's
    gradient lies mostly in the Hessian's top eigenspace (Gur-Ari et al. 2018), which
    saves steps; the Gaussian part keeps every eigenvector in the Krylov space."""
    if isinstance(start, torch.Tensor):
        return start
    if start not in START_VECTORS:
        raise unknown_choice("Lanczos start vector", start, START_VECTORS)
    if start == "random":
        return None
    gradient = op.gradient()
    noise = random_unit(op.dim, seed, op.device, op.dtype)
    norm = gradient.norm()
    return noise if not torch.isfinite(norm) or norm == 0 else gradient / norm + noise


def hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1, bottom: int = 1,
                        params: Sequence[nn.Parameter] | None = None, tol: float = 1e-3, max_steps: int = 100,
                        seed: int = 0, hvp: str = "auto", start: str | torch.Tensor = "gradient",
                        eigenvectors: bool = False, require_bottom: bool = False) -> LanczosResult:
    """The k largest and the ``bottom`` smallest Hessian eigenvalues of the loss over
    ``batches`` by Lanczos (``curvature.lanczos``: each of the k largest to an estimated
    relative error ``tol``; the smallest reported with their own error estimates and
    flag), with their residuals, step count (= Hessian-vector products) and optionally
    the eigenvectors. ``params`` restricts the Hessian to a parameter group's diagonal
    block (e.g. ``model.parameter_groups()["attention"]``). ``batches``: a list, or any
    re-iterable loader to stream a whole data set (products then recomputed per batch).
    ``require_bottom``: also run until the smallest values have converged."""
    op = HessianOperator(model, loss_fn, batches, params, hvp)
    return lanczos(op, op.dim, k, tol, max_steps, seed, op.device, op.dtype, start=start_vector(op, start, seed),
                   bottom=bottom, eigenvectors=eigenvectors, require_bottom=require_bottom)


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1,
                    params: Sequence[nn.Parameter] | None = None, method: str = "lanczos",
                    tol: float = 1e-3, max_steps: int = 100, seed: int = 0,
                    hvp: str = "auto") -> list[float]:
    """The top-k Hessian eigenvalues of the loss over ``batches``, descending.

    ``method="lanczos"``: the k largest algebraic eigenvalues (``hessian_eigenvalues``);
    ``"power"``: the k largest in magnitude by power iteration, which near a saddle
    returns a negative eigenvalue (as PyHessian does)."""
    if method not in EIGEN_METHODS:
        raise unknown_choice("eigenvalue method", method, EIGEN_METHODS)
    if method == "power":
        op = HessianOperator(model, loss_fn, batches, params, hvp)
        values, _ = power_iteration(op, op.dim, k, tol, max_steps, seed, op.device, op.dtype)
        return sorted(values, reverse=True)
    return hessian_eigenvalues(model, loss_fn, batches, k, 0, params, tol, max_steps, seed, hvp).eigenvalues


# --------------------------------------------------------------------------- the per-block table

def first_middle_last(num_blocks: int) -> tuple[int, int, int]:
    """First, middle and last block, 1-based: the paper's Block1 / Block6 / Block12 of 12
    (the middle rounds up, so 3 blocks give 1 / 2 / 3)."""
    return 1, (num_blocks + 1) // 2, num_blocks


def representative_blocks(num_blocks: int) -> list[int]:
    """The distinct blocks of ``first_middle_last``."""
    return sorted(set(first_middle_last(num_blocks)))


def block_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The per-block table's columns, from the model contract: embedding, attention or
    token-mixing, MLP or channel-mixing, first / middle / last block. The MSA / MLP
    groups hold the attention (qkv, proj) and MLP (fc1, fc2) weights of every block, not
    the LayerNorms before them, as the parameter trees of the authors' JAX code separate
    them (``MultiHeadDotProductAttention_1`` / ``MlpBlock_3`` beside ``LayerNorm_0`` /
    ``LayerNorm_2``; the Mixer's ``token_mixing`` / ``channel_mixing``); the LayerNorms
    count in their block's column."""
    groups = model.parameter_groups()
    wanted = ["embedding", "attention", "token_mixing", "mlp", "channel_mixing"]
    wanted += [f"block{k}" for k in representative_blocks(len(model.blocks))]
    return {name: groups[name] for name in wanted if groups.get(name)}


@torch.no_grad()
def activation_norms(model: nn.Module, batches: Sequence[Batch]) -> dict[str, dict[str, float]]:
    """||a_k||_2 for the representative blocks, a_k the output of block k (the post-
    activation that block k+1's weights act on; the paper's Table 3 "norm of the post-
    activation a_k of block k"): ``per_image`` the L2 norm over all of one image's
    tokens and channels (positions and channels for a ResNet), averaged over images;
    ``per_token`` the norm over channels, averaged over tokens and images."""
    blocks = representative_blocks(len(model.blocks))
    per_image, per_token = dict.fromkeys(blocks, 0.0), dict.fromkeys(blocks, 0.0)
    with measurement_mode(model):
        for weight, (images, _) in zip(batch_weights(batches), batches):
            with capture(model, attention=False, blocks=True, hidden=False) as rec:
                model(images)
            for k in blocks:
                out = rec.blocks[k - 1].double()
                per_image[k] += weight * float(out.reshape(len(out), -1).norm(dim=1).mean())
                channels = out.flatten(2).transpose(1, 2) if out.ndim == 4 else out  # (B, tokens, C)
                per_token[k] += weight * float(channels.norm(dim=-1).mean())
    return {"per_image": {f"a{k}": v for k, v in per_image.items()},
            "per_token": {f"a{k}": v for k, v in per_token.items()}}


def weight_norm(model: nn.Module) -> float:
    """||w||_2 over all parameters."""
    return float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in model.parameters())))


# --------------------------------------------------------------------------- helpers

def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


def loss_along(model: nn.Module, batches: Sequence[Batch], direction: torch.Tensor, alphas: Sequence[float],
               loss_fn: LossFn) -> list[float]:
    """Loss at w + alpha d for a flat direction d over the trainable parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    base = {n: p.detach() for n, p in model.named_parameters()}
    pieces = dict(zip(names, direction.to(next(model.parameters()).device).split(
        [base[n].numel() for n in names])))
    losses = []
    for alpha in alphas:
        shifted = {n: w + alpha * pieces[n].view_as(w).to(w.dtype) if n in pieces else w for n, w in base.items()}
        losses.append(evaluate(model, batches, loss_fn, shifted)[0])
    return losses


def plot_eigenvector_curves(alphas, losses, quadratics, values):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.3))
    for i, (loss, quad, value) in enumerate(zip(losses, quadratics, values)):
        line, = ax.plot(alphas, loss, label=f"v{i + 1} (lambda {value:.3g})")
        ax.plot(alphas, quad, "--", color=line.get_color(), lw=0.8)
    ax.set_xlabel("t  (w + t v, v a unit eigenvector)")
    ax.set_ylabel("training loss")
    ax.set_title("Loss along the top Hessian eigenvectors (dashed: quadratic model)")
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- analyzers

@dataclass
class HessianAnalysis:
    """Table 1's lambda_max with its spread, the per-block table, lambda_min, traces,
    the spectral density and the loss along the top eigenvectors.

    On the ``examples`` first examples: the top-k eigenvalues and the most negative one
    by Lanczos (``tol``: the estimated relative error of each value; see
    ``curvature.lanczos``), from a Gaussian start whose run, continued to
    ``density_steps``, is the first of ``density_vectors`` stochastic Lanczos
    quadrature probes (PyHessian's density uses 100 steps). lambda_max is also computed
    on ``subsets`` disjoint equal parts of those examples, warm-started from the top
    eigenvector, for its spread. Trace: Hutchinson with ``trace_samples`` Rademacher
    probes, per parameter tensor too, and Hutch++ with ``hutchpp_matvecs`` products
    (0: skipped). Per block (vitsam models): lambda_max of the diagonal blocks of
    ``block_groups``, with residuals and convergence flags, ||w||_2 and the ||a_k||_2 of
    ``activation_norms``. ``eigenvector_points`` > 0: the loss at w + t v_i, |t| <=
    ``eigenvector_span``, for each top eigenvector v_i (PyHessian's example plot)."""
    name: ClassVar[str] = "hessian"
    operator: ClassVar[str] = "hessian"
    examples: int = 512
    subsets: int = 4
    top_k: int = 1
    tol: float = 1e-3
    max_steps: int = 100
    density_steps: int = 80
    density_vectors: int = 3
    trace_samples: int = 16
    hutchpp_matvecs: int = 0
    blocks: bool = True
    block_max_steps: int = 100
    eigenvector_points: int = 0
    eigenvector_span: float = 0.5
    hvp: str = "auto"
    seed: int = 0

    def make_operator(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]):
        return HessianOperator(model, loss_fn, batches, method=self.hvp)

    def _stage(self, what: str, total: int, unit: str = "steps") -> Progress:
        """The progress line of one stage, e.g. "hessian lanczos" (one product per step)."""
        return Progress(total, f"{self.name} {what}", unit)

    def run(self, model: nn.Module, batches: Sequence[Batch],
            loss_fn: LossFn = cross_entropy) -> AnalysisResult:
        batches = take(batches, self.examples)
        op = self.make_operator(model, loss_fn, batches)
        where = dict(device=op.device, dtype=op.dtype)
        with self._stage("lanczos", lanczos_steps(op.dim, self.max_steps, self.density_steps)) as bar:
            top = lanczos(op, op.dim, self.top_k, self.tol, self.max_steps, self.seed, min_steps=self.density_steps,
                          bottom=1, eigenvectors=True, progress=bar, **where)
        probes = max(self.density_vectors - 1, 0)  # the run above is the first
        with self._stage("density (SLQ)", probes * min(self.density_steps, op.dim)) as bar:
            nodes, weights = spectral_density(op, op.dim, self.density_steps, self.density_vectors, self.seed,
                                              first=top.tridiagonal, progress=bar, **where)
        sizes = [p.numel() for p in op.active.values()]
        trace = None  # trace_samples 0: no trace (a cheaper lambda_max)
        if self.trace_samples > 0:
            with self._stage("trace (Hutchinson)", self.trace_samples, "probes") as bar:
                trace = hutchinson_trace(op, op.dim, self.trace_samples, self.seed, segments=sizes, progress=bar,
                                         **where)
        lam_max, lam_min = top.eigenvalues[0], top.bottom[0]
        metrics = {
            "operator": self.operator, "num_parameters": op.dim,
            "num_examples": sum(len(y) for _, y in batches), "hvp": getattr(op, "method", "jvp+vjp"),
            "lambda_max": lam_max, "top_eigenvalues": top.eigenvalues, "lanczos_residuals": top.residuals,
            "lanczos_errors": top.errors, "lanczos_steps": top.steps, "converged": top.converged, "tol": self.tol,
            "lambda_min": lam_min, "lambda_min_residual": top.bottom_residuals[0],
            "lambda_min_error": top.bottom_errors[0], "lambda_min_converged": top.bottom_converged,
            "negative_curvature_ratio": max(0.0, -lam_min) / lam_max if lam_max > 0 else None,
            **({"trace": trace.value, "trace_stderr": _json(trace.stderr), "trace_samples": trace.matvecs,
                "layer_trace": dict(zip(op.active, trace.segments))} if trace else {}),
            "density": {"nodes": nodes.tolist(), "weights": weights.tolist(), "steps": int(nodes.shape[1]),
                        "vectors": int(nodes.shape[0])},
            "negative_mass": negative_mass(nodes, weights),
            "negative_mass_beyond_tol": negative_mass(nodes, weights, self.tol * abs(lam_max)),
        }
        if self.hutchpp_matvecs:
            with self._stage("trace (Hutch++)", hutch_pp_products(self.hutchpp_matvecs), "products") as bar:
                pp = hutch_pp_trace(op, op.dim, self.hutchpp_matvecs, self.seed, progress=bar, **where)
            metrics["hutchpp_trace"] = {"value": pp.value, "stderr": _json(pp.stderr), "matvecs": pp.matvecs}
        figures = {f"{self.name}_density": plot_density(nodes, weights, f"{self.operator} spectral density (SLQ, "
                                                                         f"{nodes.shape[0]} x {nodes.shape[1]})")}
        if self.eigenvector_points > 0:
            metrics["eigenvector_curves"], figures[f"{self.name}_eigenvector_curves"] = self.eigenvector_curves(
                model, batches, loss_fn, top, op.gradient())
        if self.blocks and hasattr(model, "parameter_groups") and isinstance(op, HessianOperator):
            metrics["blocks"] = self.block_table(model, batches, op, lam_max)
        if hasattr(op, "release"):
            op.release()  # the subsets build their own graphs
        if self.subsets > 1:
            metrics["spread"] = self.subset_spread(model, batches, loss_fn, top.eigenvectors[:, 0])
        return AnalysisResult(metrics, figures)

    def subset_spread(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
                      start: torch.Tensor) -> dict:
        """lambda_max on each disjoint subset, warm-started from the whole set's top
        eigenvector (a nearby problem's answer: a few steps instead of tens)."""
        runs, subsets = [], disjoint_subsets(batches, self.subsets)
        for subset in track(subsets, label=f"{self.name} subsets", unit="subsets"):
            op = self.make_operator(model, loss_fn, subset)
            runs.append(lanczos(op, op.dim, 1, self.tol, self.max_steps, self.seed, device=op.device,
                                dtype=op.dtype, start=start))
        values = [r.eigenvalues[0] for r in runs]
        return {"subsets": self.subsets, "subset_size": len(subsets[0][0][1]),
                "lambda_max": spread(values), "converged": [r.converged for r in runs],
                "lanczos_steps": [r.steps for r in runs]}

    def eigenvector_curves(self, model, batches, loss_fn, top: LanczosResult, gradient: torch.Tensor):
        """The loss along each top eigenvector v and its quadratic model
        L + t g.v + t^2 lambda / 2 (g the gradient)."""
        alphas = np.linspace(-self.eigenvector_span, self.eigenvector_span, self.eigenvector_points).tolist()
        loss0 = evaluate(model, batches, loss_fn)[0]
        gradient = gradient.to(top.eigenvectors.device, top.eigenvectors.dtype)
        losses, quadratics = [], []
        for i, value in track(enumerate(top.eigenvalues), len(top.eigenvalues), f"{self.name} eigenvector curves",
                              "curves"):
            v = top.eigenvectors[:, i]
            losses.append(loss_along(model, batches, v, alphas, loss_fn))
            slope = float(gradient @ v)
            quadratics.append([loss0 + slope * t + 0.5 * value * t * t for t in alphas])
        record = {"alphas": alphas, "loss": losses, "quadratic": quadratics, "eigenvalues": top.eigenvalues}
        return record, plot_eigenvector_curves(alphas, losses, quadratics, top.eigenvalues)

    def block_table(self, model: nn.Module, batches: Sequence[Batch], op: HessianOperator, whole: float) -> dict:
        """The paper's per-block table (its "Whole" column is the whole-model lambda_max),
        each block's Lanczos run with its residual, error estimate and convergence flag."""
        runs = {}
        for name, params in track(block_groups(model).items(), label=f"{self.name} blocks", unit="blocks"):
            block = op.restrict(params)
            runs[name] = lanczos(block, block.dim, 1, self.tol, self.block_max_steps, self.seed,
                                 device=block.device, dtype=block.dtype,
                                 start=start_vector(block, "gradient", self.seed))
        norms = activation_norms(model, batches)
        return {"lambda_max": {**{n: r.eigenvalues[0] for n, r in runs.items()}, "whole": whole},
                "residuals": {n: r.residuals[0] for n, r in runs.items()},
                "errors": {n: r.errors[0] for n, r in runs.items()},
                "converged": {n: r.converged for n, r in runs.items()},
                "lanczos_steps": {n: r.steps for n, r in runs.items()},
                "weight_norm": weight_norm(model),
                "activation_norm": norms["per_image"], "activation_norm_per_token": norms["per_token"],
                "activation_norm_definition": "output of block k; per_image: L2 norm over one image's tokens and "
                                              "channels, averaged over images",
                "num_blocks": len(model.blocks)}


@dataclass
class GaussNewtonAnalysis(HessianAnalysis):
    """``HessianAnalysis`` on the generalized Gauss-Newton matrix J^T H_z J (the Fisher
    for softmax cross-entropy): positive semi-definite, so its lambda_min is >= 0 up to
    rounding; no per-block table. Products are recomputed per batch (forward-mode J v,
    reverse-mode J^T)."""
    name: ClassVar[str] = "ggn"
    operator: ClassVar[str] = "ggn"
    blocks: bool = False

    def make_operator(self, model, loss_fn, batches):
        return GaussNewtonOperator(model, loss_fn, batches)
