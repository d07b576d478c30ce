"""Hessian eigenvalues, trace and density against the dense Hessian of tiny models."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.analysis import batch_weights
from vitsam.analysis.hessian import (HessianOperator, hutchinson_trace, lanczos,
                                     power_iteration, spectral_density, top_eigenvalues)
from vitsam.models.layers import Attention


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


def make_batches(shape, sizes=(6, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def dense_hessian(model, batches, params=None):
    """Ground truth: torch.autograd.functional.hessian of the size-weighted mean loss."""
    chosen = {id(p) for p in (params if params is not None else model.parameters())}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def loss(flat):
        pieces = dict(zip(names, [t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes)]))
        return sum(w * F.cross_entropy(torch.func.functional_call(model, pieces, (x,)), y)
                   for w, (x, y) in zip(batch_weights(batches), batches))

    return torch.autograd.functional.hessian(loss, flat0)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def mlp_case():
    torch.manual_seed(0)
    return TinyMLP().double(), make_batches((4,))


@pytest.fixture
def attention_case():
    torch.manual_seed(1)
    model = TinyAttention().double()
    return model, make_batches((3, 4), seed=1)


def test_lanczos_top_k_matches_dense(mlp_case):
    model, batches = mlp_case
    expected = np.linalg.eigvalsh(dense_hessian(model, batches).numpy())[::-1][:3]
    got = top_eigenvalues(model, F.cross_entropy, batches, k=3, tol=1e-10)
    np.testing.assert_allclose(got, expected, rtol=1e-7)


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
    for method in ("jvp", "double_backward", "auto"):
        op = HessianOperator(model, F.cross_entropy, batches, method=method)
        torch.testing.assert_close(op(v), H @ v)
        assert op.method in ("jvp", "double_backward")  # auto settles on the faster one


def test_parameter_group_restricts_to_diagonal_block(mlp_case):
    model, batches = mlp_case
    group = [model.fc1.weight, model.fc1.bias]
    block = dense_hessian(model, batches, group)
    full = dense_hessian(model, batches)
    torch.testing.assert_close(block, full[:25, :25])  # fc1 comes first in named_parameters
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
    for method in ("jvp", "double_backward"):
        op = HessianOperator(model, F.cross_entropy, batches, method=method)
        v = torch.randn(op.dim, dtype=torch.float64)
        torch.testing.assert_close(op(v), H @ v)
    got = top_eigenvalues(model, F.cross_entropy, batches, k=2, params=attn_params, tol=1e-10)
    np.testing.assert_allclose(got, np.linalg.eigvalsh(H_attn.numpy())[::-1][:2], rtol=1e-7)


def test_hutchinson_trace_matches_dense_trace(mlp_case):
    model, batches = mlp_case
    H = dense_hessian(model, batches)
    op = HessianOperator(model, F.cross_entropy, batches)
    estimate, stderr = hutchinson_trace(op, op.dim, samples=100, seed=0, dtype=torch.float64)
    true = float(torch.trace(H))
    assert abs(estimate - true) <= 4 * stderr


def test_hutchinson_is_exact_on_a_diagonal_operator():
    # Rademacher v gives v^T D v = tr(D) for every draw: no sampling error at all.
    diag = torch.arange(1.0, 8.0, dtype=torch.float64)
    estimate, stderr = hutchinson_trace(lambda v: diag * v, 7, samples=5, dtype=torch.float64)
    assert estimate == pytest.approx(28.0, rel=1e-12) and stderr == pytest.approx(0.0, abs=1e-12)


def test_slq_with_full_steps_recovers_the_spectrum():
    A = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    A = A + A.T
    nodes, weights = spectral_density(lambda v: A @ v, 6, steps=6, vectors=2, dtype=torch.float64)
    for row_nodes, row_weights in zip(nodes, weights):
        np.testing.assert_allclose(np.sort(row_nodes), np.linalg.eigvalsh(A.numpy()), atol=1e-8)
        np.testing.assert_allclose(row_weights.sum(), 1.0, rtol=1e-10)


def test_lanczos_stops_at_stated_tolerance():
    diag = torch.linspace(1.0, 100.0, 500, dtype=torch.float64)
    result = lanczos(lambda v: diag * v, 500, k=1, tol=1e-6, max_steps=500, dtype=torch.float64)
    assert result.converged and result.steps < 500
    assert abs(result.eigenvalues[0] - 100.0) <= 1e-6 * 100.0
    assert result.residuals[0] <= 1e-6 * result.eigenvalues[0]
