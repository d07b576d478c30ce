"""The empirical NTK against the kernel built from full Jacobians; kappa against numpy."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from vitsam.analysis.ntk import (NTKConditioning, block_condition_numbers, condition_number,
                                 empirical_ntk, kappa)


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
    J_sum = J.sum(1)
    torch.testing.assert_close(empirical_ntk(model, inputs, "sum", chunk=2), J_sum @ J_sum.T)
    J_full = J.reshape(15, -1)  # input-major rows: i * K + k
    torch.testing.assert_close(empirical_ntk(model, inputs, "full", chunk=3), J_full @ J_full.T)


def test_condition_number_matches_numpy_and_averages_blocks():
    model = tiny_model()
    inputs = torch.randn(6, 1, 2, 3, dtype=torch.float64)
    expected = []
    for block in (inputs[:3], inputs[3:]):
        J = full_jacobian(model, block).sum(1).numpy()
        eig = np.linalg.eigvalsh(J @ J.T)
        expected.append(eig[-1] / eig[0])
    assert condition_number(model, inputs, block_size=3) == pytest.approx(np.mean(expected), rel=1e-8)


def test_singular_kernel_reports_inf_with_a_reason():
    # A repeated input gives two equal Jacobian rows: the kernel is exactly singular.
    model = tiny_model()
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64)
    value, why = block_condition_numbers(model, torch.cat([x, x[:1]]), kernel="sum")[0]
    assert math.isinf(value) and "singular" in why
    assert kappa(torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)))[0] == pytest.approx(4.0)


def test_analyzer_reports_both_kernels_as_json_numbers():
    model = tiny_model()
    images = torch.randn(8, 1, 2, 3, dtype=torch.float64)
    batches = [(images[:5], torch.zeros(5, dtype=torch.long)), (images[5:], torch.zeros(3, dtype=torch.long))]
    metrics = NTKConditioning(blocks=2, block_size=4).run(model, batches).metrics
    assert metrics["blocks"] == 2 and set(metrics) >= {"sum", "full"}
    assert metrics["sum"]["kappa"] == pytest.approx(condition_number(model, images, 4), rel=1e-10)
