"""Filter-normalized directions, 1-D landscapes, interpolation and Gaussian perturbation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.analysis import evaluate
from vitsam.analysis.landscape import (GaussianPerturbation, LossLandscape,
                                       filter_normalized_direction, interpolate, loss_curve)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (5, 3)]


def test_each_direction_filter_has_its_weight_filter_norm():
    model = conv_model()
    direction = filter_normalized_direction(model, seed=1)
    for name, w in model.named_parameters():
        d = direction[name]
        if w.ndim > 1:
            for d_filter, w_filter in zip(d, w):  # filters: slices along the first axis
                assert d_filter.norm() == pytest.approx(float(w_filter.norm()), rel=1e-5)
        else:
            assert torch.count_nonzero(d) == 0  # biases and norm parameters left out
    kept = filter_normalized_direction(model, seed=1, ignore_biases_and_norms=False)
    torch.testing.assert_close(kept["1.weight"], model[1].weight.detach())  # Li et al.: d = w


def test_landscape_at_zero_is_the_loss(batches):
    model = conv_model()
    model[1].running_mean.uniform_(-0.1, 0.1)  # eval mode must use running statistics
    model.train()
    loss, error = evaluate(model, batches)
    model.eval()
    direct = sum(len(y) * F.cross_entropy(model(x), y).item() for x, y in batches) / 8
    assert loss == pytest.approx(direct, rel=1e-6)
    losses, errors = loss_curve(model, batches, filter_normalized_direction(model), [-0.5, 0.0, 0.5])
    assert losses[1] == pytest.approx(loss, rel=1e-6) and errors[1] == error
    assert losses[0] != pytest.approx(loss)
    assert model.training is False  # evaluate restores the caller's mode


def test_interpolation_endpoints_are_the_two_models(batches):
    a, b = conv_model(0), conv_model(1)
    b[1].running_var.fill_(2.0)  # buffers must follow the interpolation too
    losses, _ = interpolate(a, a.state_dict(), b.state_dict(), batches, [0.0, 0.5, 1.0])
    assert losses[0] == pytest.approx(evaluate(a, batches)[0], rel=1e-6)
    assert losses[2] == pytest.approx(evaluate(b, batches)[0], rel=1e-6)


def test_analyzers_return_json_and_figures(batches):
    import json

    model = conv_model()
    result = LossLandscape(points=3, grid=3).run(model, batches)
    json.dumps(result.metrics)
    assert result.metrics["loss_1d"][1] == pytest.approx(evaluate(model, batches)[0], rel=1e-6)
    assert len(result.metrics["loss_2d"]) == 3 and set(result.figures) == {
        "landscape_1d", "landscape_contour", "landscape_surface"}
    rows = GaussianPerturbation(sigmas=(0.0, 0.1), draws=2).run(model, batches).metrics["perturbed"]
    assert rows[0]["loss"] == pytest.approx(evaluate(model, batches)[0], rel=1e-6)
    assert rows[0]["loss_std"] == 0.0 and rows[1]["loss_std"] > 0.0
