"""Hessian / Gauss-Newton operators, Lanczos, traces and densities against dense
matrices of tiny models (torch.autograd.functional.hessian / jacobian)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense import dense_hessian, flat_loss
from vitsam.analysis import batch_weights
from vitsam.analysis.curvature import (hutch_pp_trace, hutchinson_trace, lanczos, negative_mass,
                                       power_iteration, spectral_density)
from vitsam.analysis.hessian import GaussNewtonAnalysis, HessianAnalysis, hessian_eigenvalues, top_eigenvalues
from vitsam.analysis.operators import GaussNewtonOperator, HessianOperator
from vitsam.errors import VitsamError
from vitsam.models.layers import Attention, DropPath


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TinyAttention(nn.Module):
    """(B, 3 tokens, 4) -> 2-head attention -> mean over tokens -> 3 logits."""
    def __init__(self):
        super().__init__()
        self.attn, self.head = Attention(4, num_heads=2), nn.Linear(4, 3)

    def forward(self, x):
        return self.head((x + self.attn(x)).mean(dim=1))


class TinyRegularized(nn.Module):
    """Conv -> BatchNorm -> ReLU, a drop-path residual branch, dropout, linear head: the
    Hessian must be that of the eval-mode network (running statistics, no masks)."""
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
        self.branch, self.drop_path = nn.Linear(8, 8), DropPath(0.5)
        self.drop, self.head = nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)  # (B, 2 * 2 * 2)
        h = h + self.drop_path(torch.tanh(self.branch(h)))
        return self.head(self.drop(h))


def make_batches(shape, sizes=(6, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (n,), generator=g)) for n in sizes]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def mlp_case():
    torch.manual_seed(0)
    return TinyMLP().double(), make_batches((4,))


@pytest.fixture
def attention_case():
    torch.manual_seed(1)
    return TinyAttention().double(), make_batches((3, 4), seed=1)


def test_lanczos_top_k_and_bottom_match_dense(mlp_case):
    model, batches = mlp_case
    eigenvalues, eigenvectors = np.linalg.eigh(dense_hessian(model, batches).numpy())
    for hvp in ("graph", "jvp", "double_backward"):
        got = top_eigenvalues(model, F.cross_entropy, batches, k=3, tol=1e-10, hvp=hvp)
        np.testing.assert_allclose(got, eigenvalues[::-1][:3], rtol=1e-7)
    op = HessianOperator(model, F.cross_entropy, batches)
    result = lanczos(op, op.dim, k=2, tol=1e-10, bottom=1, require_bottom=True, eigenvectors=True, dtype=torch.float64)
    np.testing.assert_allclose(result.bottom, eigenvalues[:1], rtol=1e-7, atol=1e-12)
    assert eigenvalues[0] < 0 < eigenvalues[-1]  # an indefinite Hessian: both ends matter
    for i, column in enumerate((-1, -2)):  # unit Ritz vectors = the dense eigenvectors up to sign
        overlap = abs(float(result.eigenvectors[:, i] @ torch.from_numpy(eigenvectors[:, column])))
        assert overlap == pytest.approx(1.0, abs=1e-7)


def test_operator_gradient_and_the_gradient_start(mlp_case):
    model, batches = mlp_case
    loss, flat0 = flat_loss(model, batches)
    expected = torch.autograd.functional.jacobian(loss, flat0)
    for method in ("graph", "jvp"):
        torch.testing.assert_close(HessianOperator(model, F.cross_entropy, batches, method=method).gradient(), expected)
    group = [model.fc2.weight, model.fc2.bias]  # fc2 comes last: the last 18 entries
    torch.testing.assert_close(HessianOperator(model, F.cross_entropy, batches, group).gradient(), expected[-18:])
    eigenvalues = np.linalg.eigvalsh(dense_hessian(model, batches).numpy())
    result = hessian_eigenvalues(model, F.cross_entropy, batches, k=2, bottom=1, tol=1e-10)
    np.testing.assert_allclose(result.eigenvalues, eigenvalues[::-1][:2], rtol=1e-7)
    assert result.bottom[0] == pytest.approx(eigenvalues[0], rel=1e-6)
    with pytest.raises(VitsamError, match="valid choices"):
        hessian_eigenvalues(model, F.cross_entropy, batches, start="gradeint")


def test_power_iteration_matches_dense(mlp_case):
    model, batches = mlp_case
    expected = np.linalg.eigvalsh(dense_hessian(model, batches).numpy())[-1]
    got = top_eigenvalues(model, F.cross_entropy, batches, method="power", tol=1e-10, max_steps=500)
    np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_power_iteration_deflation_gives_top_k_by_magnitude():
    eigenvalues = torch.tensor([5.0, -4.0, 3.0, 1.0, 0.5, -0.1], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    A = Q @ torch.diag(eigenvalues) @ Q.T
    got, calls = power_iteration(lambda v: A @ v, 6, k=3, tol=1e-12, max_iters=2000, dtype=torch.float64)
    np.testing.assert_allclose(got, [5.0, -4.0, 3.0], rtol=1e-6)


def test_hvp_methods_agree_with_dense(mlp_case):
    model, batches = mlp_case
    H = dense_hessian(model, batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for method in ("graph", "jvp", "double_backward", "auto"):
        op = HessianOperator(model, F.cross_entropy, batches, method=method)
        torch.testing.assert_close(op(v), H @ v)
        assert op.method in ("graph", "jvp", "double_backward")
    assert HessianOperator(model, F.cross_entropy, batches).method == "graph"  # it fits: kept
    assert HessianOperator(model, F.cross_entropy, batches, graph_memory=1).method == "auto"  # it does not
    with pytest.raises(VitsamError, match="over the budget"):
        HessianOperator(model, F.cross_entropy, batches, method="graph", graph_memory=1)


def test_parameter_group_restricts_to_diagonal_block(mlp_case):
    model, batches = mlp_case
    group = [model.fc1.weight, model.fc1.bias]
    block = dense_hessian(model, batches, group)
    full = dense_hessian(model, batches)
    torch.testing.assert_close(block, full[:25, :25])  # fc1 comes first in named_parameters
    v = torch.randn(25, dtype=torch.float64)
    whole = HessianOperator(model, F.cross_entropy, batches, method="graph")
    torch.testing.assert_close(whole.restrict(group)(v), block @ v)  # shares the kept graph
    assert whole.restrict(group).graph is whole.graph
    expected = np.linalg.eigvalsh(block.numpy())[-1]
    got = top_eigenvalues(model, F.cross_entropy, batches, params=group, tol=1e-10)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_attention_model_through_explicit_path(attention_case):
    model, batches = attention_case
    model.attn.explicit = True  # the dense ground truth uses the explicit softmax path too
    H = dense_hessian(model, batches)
    attn_params = list(model.attn.parameters())
    H_attn = dense_hessian(model, batches, attn_params)
    model.attn.explicit = False  # the operator must switch it on by itself
    for method in ("graph", "jvp", "double_backward"):
        op = HessianOperator(model, F.cross_entropy, batches, method=method)
        v = torch.randn(op.dim, dtype=torch.float64)
        torch.testing.assert_close(op(v), H @ v)
    assert model.attn.explicit is False
    got = top_eigenvalues(model, F.cross_entropy, batches, k=2, params=attn_params, tol=1e-10)
    np.testing.assert_allclose(got, np.linalg.eigvalsh(H_attn.numpy())[::-1][:2], rtol=1e-7)


def test_batchnorm_dropout_drop_path_model_uses_the_eval_mode_hessian():
    torch.manual_seed(3)
    model = TinyRegularized().double()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    batches = make_batches((1, 4, 4), sizes=(5, 4), seed=3)
    model.eval()
    H = dense_hessian(model, batches)  # eval mode: running statistics, no masks
    model.train()
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for method in ("graph", "jvp", "double_backward"):
        op = HessianOperator(model, F.cross_entropy, batches, method=method)
        torch.testing.assert_close(op(v), H @ v)
        assert model.training and "forward" not in vars(model.bn)  # the caller's mode and BatchNorm restored
    stats = model.bn.running_mean.clone()
    GaussNewtonOperator(model, F.cross_entropy, batches)(v)
    torch.testing.assert_close(model.bn.running_mean, stats)  # measurements never update BN statistics


class Reiterable:
    """A loader that is not a Sequence: the operator must stream it, once per product."""
    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_streamed_batches_accumulate_and_one_shot_iterators_are_refused(mlp_case):
    model, batches = mlp_case
    H = dense_hessian(model, batches)
    loader = Reiterable(batches)
    op = HessianOperator(model, F.cross_entropy, loader, method="jvp")
    v = torch.randn(H.shape[0], dtype=torch.float64)
    before = loader.passes
    torch.testing.assert_close(op(v), H @ v)
    torch.testing.assert_close(op(v), H @ v)
    assert loader.passes == before + 2  # one pass over the data per product
    assert HessianOperator(model, F.cross_entropy, loader).method != "graph"  # a stream is not merged
    with pytest.raises(VitsamError, match="re-iterable"):
        HessianOperator(model, F.cross_entropy, (b for b in batches))


def test_gauss_newton_is_j_transpose_h_j_and_the_fisher(mlp_case):
    model, batches = mlp_case
    names = [n for n, _ in model.named_parameters()]
    named = dict(model.named_parameters())
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    G, fisher = 0.0, 0.0
    for weight, (x, y) in zip(batch_weights(batches), batches):
        def logits(flat):
            pieces = dict(zip(names, [t.view_as(named[n]) for n, t in zip(names, flat.split(
                [named[n].numel() for n in names]))]))
            return torch.func.functional_call(model, pieces, (x,))
        J = torch.autograd.functional.jacobian(logits, flat0)  # (B, K, P)
        z = logits(flat0).detach()
        H_z = torch.autograd.functional.hessian(lambda t: F.cross_entropy(t, y), z)  # (B, K, B, K)
        G = G + weight * torch.einsum("bkp,bkcl,clq->pq", J, H_z, J)
        # The Fisher: E over y ~ softmax(z) of the per-example score outer products, mean over examples.
        p = z.softmax(-1)
        scores = torch.einsum("bk,bkp->bkp", torch.ones_like(p), J) - torch.einsum("bl,blp->bp", p, J)[:, None]
        fisher = fisher + weight * torch.einsum("bk,bkp,bkq->pq", p, scores, scores) / len(y)
    torch.testing.assert_close(G, fisher)
    op = GaussNewtonOperator(model, F.cross_entropy, batches)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), G @ v)
    assert np.linalg.eigvalsh(G.numpy())[0] > -1e-12  # positive semi-definite


def test_hutchinson_trace_and_per_segment_traces(mlp_case):
    model, batches = mlp_case
    H = dense_hessian(model, batches)
    op = HessianOperator(model, F.cross_entropy, batches)
    estimate = hutchinson_trace(op, op.dim, samples=100, seed=0, dtype=torch.float64, segments=[20, 5, 15, 3])
    assert abs(estimate.value - float(torch.trace(H))) <= 4 * estimate.stderr
    assert sum(estimate.segments) == pytest.approx(estimate.value, rel=1e-12)
    # On a diagonal operator every Rademacher probe is exact, segment by segment.
    diag = torch.arange(1.0, 8.0, dtype=torch.float64)
    exact = hutchinson_trace(lambda v: diag * v, 7, samples=3, dtype=torch.float64, segments=[3, 4])
    assert exact.value == pytest.approx(28.0) and exact.stderr == pytest.approx(0.0, abs=1e-12)
    assert exact.segments == pytest.approx([6.0, 22.0])


def test_hutch_pp_is_exact_on_low_rank_and_beats_hutchinson_on_decaying_spectra():
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=g))
    low_rank = Q[:, :4] @ torch.diag(torch.tensor([9.0, 5.0, -3.0, 1.0], dtype=torch.float64)) @ Q[:, :4].T
    estimate = hutch_pp_trace(lambda v: low_rank @ v, 60, matvecs=15, dtype=torch.float64)
    assert estimate.value == pytest.approx(12.0, rel=1e-10) and estimate.matvecs == 15
    decaying = Q @ torch.diag(0.5 ** torch.arange(60, dtype=torch.float64) * 10) @ Q.T
    true = float(torch.trace(decaying))
    pp_errors = [abs(hutch_pp_trace(lambda v: decaying @ v, 60, 30, seed=s, dtype=torch.float64).value - true)
                 for s in range(10)]
    h_errors = [abs(hutchinson_trace(lambda v: decaying @ v, 60, 30, seed=s, dtype=torch.float64).value - true)
                for s in range(10)]
    assert np.mean(pp_errors) < 0.1 * np.mean(h_errors)


def test_slq_with_full_steps_recovers_the_spectrum_and_its_negative_mass():
    A = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    A = A + A.T
    eigenvalues = np.linalg.eigvalsh(A.numpy())
    nodes, weights = spectral_density(lambda v: A @ v, 6, steps=6, vectors=2, dtype=torch.float64)
    for row_nodes, row_weights in zip(nodes, weights):
        np.testing.assert_allclose(np.sort(row_nodes), eigenvalues, atol=1e-8)
        np.testing.assert_allclose(row_weights.sum(), 1.0, rtol=1e-10)
    # Each probe's weights are its squared components on the eigenvectors; their expectation
    # over probes is 1/n per eigenvalue: many probes estimate the share of negative eigenvalues.
    nodes, weights = spectral_density(lambda v: A @ v, 6, steps=6, vectors=400, dtype=torch.float64)
    assert negative_mass(nodes, weights) == pytest.approx(np.mean(eigenvalues < 0), abs=0.03)


def test_lanczos_error_estimate_holds_and_warm_starts_save_steps():
    diag = torch.linspace(1.0, 100.0, 500, dtype=torch.float64)
    for tol in (1e-3, 1e-6):
        result = lanczos(lambda v: diag * v, 500, k=1, tol=tol, max_steps=500, dtype=torch.float64)
        assert result.converged and result.steps < 500
        assert abs(result.eigenvalues[0] - 100.0) <= tol * 100.0
        assert result.errors[0] <= tol * result.eigenvalues[0]
    cold = lanczos(lambda v: diag * v, 500, k=1, tol=1e-6, max_steps=500, dtype=torch.float64)
    near = torch.zeros(500, dtype=torch.float64)
    near[-1], near[0] = 1.0, 0.05
    warm = lanczos(lambda v: diag * v, 500, k=1, tol=1e-6, max_steps=500, dtype=torch.float64, start=near)
    assert warm.eigenvalues[0] == pytest.approx(100.0, rel=1e-6) and warm.steps < cold.steps


def test_analyzer_against_dense_hessians(mlp_case):
    model, batches = mlp_case
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    first8 = [(images[:8], labels[:8])]  # the analyzer takes the first 8 of the 9 examples
    eigenvalues, eigenvectors = np.linalg.eigh(dense_hessian(model, first8).numpy())
    analysis = HessianAnalysis(examples=8, subsets=2, top_k=2, tol=1e-8, density_steps=43, density_vectors=2,
                               trace_samples=4, hutchpp_matvecs=9, eigenvector_points=3, eigenvector_span=0.2)
    result = analysis.run(model, batches)
    metrics = result.metrics
    assert metrics["num_examples"] == 8 and metrics["converged"] and metrics["lambda_min_converged"]
    np.testing.assert_allclose(metrics["top_eigenvalues"], eigenvalues[::-1][:2], rtol=1e-6)
    assert metrics["lambda_min"] == pytest.approx(eigenvalues[0], rel=1e-6)
    assert metrics["negative_curvature_ratio"] == pytest.approx(-eigenvalues[0] / eigenvalues[-1], rel=1e-6)
    assert sum(metrics["layer_trace"].values()) == pytest.approx(metrics["trace"], rel=1e-9)
    assert set(metrics["layer_trace"]) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    # The spread: lambda_max of each disjoint half (the first 4 and the next 4 examples).
    halves = [[(images[:4], labels[:4])], [(images[4:8], labels[4:8])]]
    expected = [np.linalg.eigvalsh(dense_hessian(model, half).numpy())[-1] for half in halves]
    np.testing.assert_allclose(metrics["spread"]["lambda_max"]["values"], expected, rtol=1e-6)
    assert metrics["spread"]["lambda_max"]["stderr"] == pytest.approx(np.std(expected, ddof=1) / np.sqrt(2))
    # The loss along the top eigenvector at t = 0.2, against the model moved by hand.
    v = torch.from_numpy(eigenvectors[:, -1])
    loss, flat0 = flat_loss(model, first8)
    along = [float(loss(flat0 + t * v)) for t in (-0.2, 0.2)]
    curve = metrics["eigenvector_curves"]["loss"][0]
    assert sorted([curve[0], curve[2]]) == pytest.approx(sorted(along), rel=1e-6)  # the sign of v is free
    assert metrics["eigenvector_curves"]["quadratic"][0][1] == pytest.approx(float(loss(flat0)), rel=1e-12)
    assert metrics["hutchpp_trace"]["matvecs"] == 9
    assert set(result.figures) == {"hessian_density", "hessian_eigenvector_curves"}


def test_no_trace_probes_gives_lambda_max_without_a_trace(mlp_case):
    model, batches = mlp_case
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    largest = np.linalg.eigvalsh(dense_hessian(model, [(images[:8], labels[:8])]).numpy())[-1]
    metrics = HessianAnalysis(examples=8, subsets=0, tol=1e-8, density_steps=0, density_vectors=1,
                              trace_samples=0).run(model, batches).metrics
    assert metrics["lambda_max"] == pytest.approx(largest, rel=1e-6)
    assert "trace" not in metrics and "layer_trace" not in metrics


def test_gauss_newton_analyzer_is_positive_semidefinite(mlp_case):
    model, batches = mlp_case
    metrics = GaussNewtonAnalysis(examples=9, subsets=0, tol=1e-8, density_steps=8, density_vectors=1,
                                  trace_samples=2).run(model, batches).metrics
    assert metrics["operator"] == "ggn" and "blocks" not in metrics
    assert metrics["lambda_min"] > -1e-8 * metrics["lambda_max"]
