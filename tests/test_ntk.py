"""Empirical NTK kernels against kernels built from full autograd Jacobians; chunked
computation against unchunked; kappa and its summary against numpy."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vitsam.analysis.ntk import (NTKConditioning, block_condition_numbers, condition_number, empirical_ntk,
                                 kappa, ntk_kernels)
from vitsam.errors import VitsamError


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def full_jacobian(model, inputs):
    """Ground truth: d logits / d params of the whole batch, (n, K, P), from autograd."""
    names = [n for n, _ in model.named_parameters()]
    named = dict(model.named_parameters())
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    sizes = [named[n].numel() for n in names]

    def logits(flat):
        params = {n: t.view_as(named[n]) for n, t in zip(names, flat.split(sizes))}
        return torch.func.functional_call(model, params, (inputs,))

    return torch.autograd.functional.jacobian(logits, flat0)  # (n, K, P)


def test_kernels_match_full_jacobians():
    model = tiny_model()
    inputs = torch.randn(5, 1, 2, 3, dtype=torch.float64)
    J = full_jacobian(model, inputs)
    trace = sum(J[:, k] @ J[:, k].T for k in range(3))  # sum_k J_k J_k^T
    torch.testing.assert_close(empirical_ntk(model, inputs, "trace", chunk=2), trace)
    J_full = J.reshape(15, -1)  # input-major rows: i * K + k
    torch.testing.assert_close(empirical_ntk(model, inputs, "full", chunk=3), J_full @ J_full.T)
    J_sum = J.sum(1)
    torch.testing.assert_close(empirical_ntk(model, inputs, "sum", chunk=2), J_sum @ J_sum.T)
    # The trace kernel is the full kernel's trace over the logits.
    torch.testing.assert_close(trace, (J_full @ J_full.T).view(5, 3, 5, 3).diagonal(dim1=1, dim2=3).sum(-1))


def test_chunks_over_parameters_and_logits_give_the_same_kernels():
    model = tiny_model()
    inputs = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    whole = ntk_kernels(model, inputs, ("trace", "sum"), chunk=4, max_bytes=2**30)
    # 4 inputs x 8 bytes x 8 entries: one logit of one small tensor at a time.
    chunked = ntk_kernels(model, inputs, ("trace", "sum"), chunk=1, max_bytes=4 * 8 * 8)
    for kernel in ("trace", "sum"):
        torch.testing.assert_close(chunked[kernel], whole[kernel])


def test_full_kernel_over_budget_fails_clearly_and_the_analyzer_skips_it():
    model = tiny_model()
    inputs = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    with pytest.raises(VitsamError, match="full NTK.*GiB.*use kernel 'trace'"):
        ntk_kernels(model, inputs, ("full",), max_bytes=1000)
    batches = [(inputs, torch.zeros(4, dtype=torch.long))]
    metrics = NTKConditioning(blocks=2, block_size=2, kernels=("trace", "full"), max_bytes=1000).run(
        model, batches).metrics
    assert "use kernel 'trace'" in metrics["full"]["skipped"] and metrics["trace"]["kappa"] > 1


def test_condition_number_matches_numpy_and_averages_blocks():
    model = tiny_model()
    inputs = torch.randn(6, 1, 2, 3, dtype=torch.float64)
    expected = []
    for block in (inputs[:3], inputs[3:]):
        J = full_jacobian(model, block)
        eig = np.linalg.eigvalsh(sum((J[:, k] @ J[:, k].T).numpy() for k in range(3)))
        expected.append(eig[-1] / eig[0])
    assert condition_number(model, inputs, block_size=3) == pytest.approx(np.mean(expected), rel=1e-8)


def test_singular_kernel_reports_inf_with_a_reason():
    # A repeated input gives two equal Jacobian rows: the kernel is exactly singular.
    model = tiny_model()
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64)
    value, why = block_condition_numbers(model, torch.cat([x, x[:1]]), kernel="trace")[0]
    assert math.isinf(value) and "singular" in why
    assert kappa(torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)))[0] == pytest.approx(4.0)


def test_analyzer_summarizes_every_block_against_numpy():
    model = tiny_model()
    images = torch.randn(13, 1, 2, 3, dtype=torch.float64)
    batches = [(images[:5], torch.zeros(5, dtype=torch.long)), (images[5:], torch.zeros(8, dtype=torch.long))]
    metrics = NTKConditioning(blocks=4, block_size=3, kernels=("trace", "full", "sum")).run(model, batches).metrics
    json.dumps(metrics, allow_nan=False)
    assert metrics["headline_kernel"] == "trace" and metrics["blocks"] == 4
    assert set(metrics["kernel_definitions"]) == {"trace", "full", "sum"}
    for kernel in ("trace", "full", "sum"):
        values = []
        for start in range(0, 12, 3):
            J = full_jacobian(model, images[start:start + 3])
            if kernel == "trace":
                K = sum(J[:, k] @ J[:, k].T for k in range(3))
            elif kernel == "full":
                K = J.reshape(9, -1) @ J.reshape(9, -1).T
            else:
                K = J.sum(1) @ J.sum(1).T
            eig = np.linalg.eigvalsh(K.numpy())
            values.append(eig[-1] / eig[0])
        entry = metrics[kernel]
        np.testing.assert_allclose(entry["per_block"], values, rtol=1e-6)
        assert entry["kappa"] == pytest.approx(np.mean(values), rel=1e-6)
        assert entry["kappa_median"] == pytest.approx(np.median(values), rel=1e-6)
        assert entry["kappa_stderr"] == pytest.approx(np.std(values, ddof=1) / 2, rel=1e-6)
