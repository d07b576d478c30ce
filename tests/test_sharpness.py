"""Worst-case, adaptive and m-sharpness against the exact maximum of a quadratic loss
over a ball (the trust-region subproblem, solved densely)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.analysis.sharpness import SharpnessAnalysis, m_sharpness, worst_case_sharpness
from vitsam.errors import VitsamError

pytestmark = pytest.mark.usefixtures("single_thread")
K = 3


def squared_error(logits, labels):
    """Half the squared distance to the one-hot label, averaged over examples: with a
    linear model the loss is exactly quadratic in the weights."""
    return 0.5 * ((logits - F.one_hot(labels, K).to(logits.dtype)) ** 2).sum(-1).mean()


def linear_case(n=8, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, K).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=g)
    return model, [(x[:5], y[:5]), (x[5:], y[5:])]


def quadratic(model, batches):
    """(loss, gradient, Hessian) of the loss in the flat parameters (weight, then bias)."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        W, b = flat[:4 * K].view(K, 4), flat[4 * K:]
        return squared_error(x @ W.T + b, y)

    grad = torch.autograd.functional.jacobian(loss, w0)
    return float(loss(w0)), grad.numpy(), torch.autograd.functional.hessian(loss, w0).numpy()


def exact_maximum(g, A, rho):
    """max over ||e|| <= rho of g.e + e.A.e / 2 for A positive semi-definite: on the
    sphere, e = (mu I - A)^-1 g with mu > lambda_max(A) chosen so that ||e|| = rho
    (the trust-region subproblem; bisection on the secular equation)."""
    top = np.linalg.eigvalsh(A)[-1]
    lo, hi = top + 1e-12, top + np.linalg.norm(g) / rho + 1.0
    for _ in range(200):
        mu = (lo + hi) / 2
        e = np.linalg.solve(mu * np.eye(len(g)) - A, g)
        lo, hi = (mu, hi) if np.linalg.norm(e) > rho else (lo, mu)
    return float(g @ e + 0.5 * e @ A @ e)


def test_worst_case_sharpness_reaches_the_exact_maximum():
    model, batches = linear_case()
    _, g, A = quadratic(model, batches)
    for rho in (0.05, 0.5):
        result = worst_case_sharpness(model, batches, rho, steps=60, loss_fn=squared_error)
        assert result["sharpness"] == pytest.approx(exact_maximum(g, A, rho), rel=1e-4)
        assert result["eps_norm"] == pytest.approx(rho, rel=1e-9)
    one = worst_case_sharpness(model, batches, 0.5, steps=1, loss_fn=squared_error)
    e = 0.5 * g / np.linalg.norm(g)  # one step is SAM's perturbation
    assert one["sharpness"] == pytest.approx(float(g @ e + 0.5 * e @ A @ e), rel=1e-10)


def test_adaptive_sharpness_is_the_maximum_over_the_scaled_ball():
    model, batches = linear_case(seed=1)
    _, g, A = quadratic(model, batches)
    eta = 0.1
    T = np.abs(np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])) + eta
    result = worst_case_sharpness(model, batches, 0.5, steps=60, loss_fn=squared_error, adaptive=True, eta=eta)
    # In delta = e / T coordinates the ball is round: gradient T g, Hessian T A T.
    assert result["sharpness"] == pytest.approx(exact_maximum(T * g, T[:, None] * A * T[None], 0.5), rel=1e-4)
    assert result["adaptive"] and result["eta"] == eta


def test_m_sharpness_averages_the_subsets_own_maxima():
    model, batches = linear_case(n=8, seed=2)
    expected = []
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    for part in range(2):
        subset = [(x[4 * part:4 * part + 4], y[4 * part:4 * part + 4])]
        _, g, A = quadratic(model, subset)
        expected.append(exact_maximum(g, A, 0.3))
    result = m_sharpness(model, batches, 0.3, m=4, steps=60, loss_fn=squared_error)
    assert result["subsets"] == 2
    np.testing.assert_allclose(result["spread"]["values"], expected, rtol=1e-4)
    assert result["sharpness"] == pytest.approx(np.mean(expected), rel=1e-4)
    with pytest.raises(VitsamError, match="m-sharpness"):
        m_sharpness(model, batches, 0.3, m=9, loss_fn=squared_error)


def test_analyzer_returns_json():
    model, batches = linear_case()
    metrics = SharpnessAnalysis(m=4, steps=2).run(model, batches, loss_fn=squared_error).metrics
    json.dumps(metrics, allow_nan=False)
    assert metrics["worst_case"]["sharpness"] > 0 and metrics["adaptive"]["adaptive"]
    assert metrics["m_sharpness"]["subsets"] == 2
