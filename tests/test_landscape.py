"""Directions, landscapes, interpolation and Gaussian perturbation against models whose
weights are moved by hand, and trajectory PCA against numpy's SVD."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.analysis import evaluate
from vitsam.analysis.landscape import (GaussianPerturbation, LossLandscape, filter_normalized_direction,
                                       gaussian_noise, gaussian_perturbed, interpolate, loss_curve, loss_surface,
                                       pca_directions)
from vitsam.errors import VitsamError


pytestmark = pytest.mark.usefixtures("single_thread")


def conv_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model[1].running_mean.uniform_(-0.1, 0.1)  # eval mode must use running statistics
    model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (5, 3)]


def moved(model, steps):
    """Ground truth: a copy of the model with w + sum_i c_i d_i written into its parameters."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in other.named_parameters():
            p.add_(sum(c * d[name] for c, d in steps))
    return other


def direct_loss(model, batches):
    model.eval()
    with torch.no_grad():
        return sum(len(y) * F.cross_entropy(model(x), y).item() for x, y in batches) / sum(len(y) for _, y in batches)


def test_each_direction_filter_has_its_weight_filter_norm():
    model = conv_model()
    direction = filter_normalized_direction(model, seed=1)
    for name, w in model.named_parameters():
        d = direction[name]
        if w.ndim > 1:
            for d_filter, w_filter in zip(d, w):  # filters: slices along the first axis
                assert float(d_filter.norm()) == pytest.approx(float(w_filter.detach().norm()), rel=1e-5)
        else:
            assert torch.count_nonzero(d) == 0  # biases and norm parameters left out
    kept = filter_normalized_direction(model, seed=1, ignore_biases_and_norms=False)
    torch.testing.assert_close(kept["1.weight"], model[1].weight.detach())  # Li et al.: d = w


def test_landscape_points_are_the_loss_of_the_moved_model(batches):
    model = conv_model()
    d1, d2 = filter_normalized_direction(model, 1), filter_normalized_direction(model, 2)
    losses, errors = loss_curve(model, batches, d1, [-0.5, 0.0, 0.3])
    for alpha, loss in zip([-0.5, 0.0, 0.3], losses):
        assert loss == pytest.approx(direct_loss(moved(model, [(alpha, d1)]), batches), rel=1e-6)
    surface = loss_surface(model, batches, d1, d2, [-0.2, 0.4], [0.1, -0.3])  # (betas, alphas)
    for i, beta in enumerate([0.1, -0.3]):
        for j, alpha in enumerate([-0.2, 0.4]):
            assert surface[i, j] == pytest.approx(direct_loss(moved(model, [(alpha, d1), (beta, d2)]), batches),
                                                  rel=1e-6)
    model.train()
    evaluate(model, batches)
    assert model.training  # evaluate restores the caller's mode


def test_interpolation_is_the_loss_of_the_mixed_model(batches):
    a, b = conv_model(0), conv_model(1)
    b[1].running_var.fill_(2.0)  # buffers must follow the interpolation too
    losses, _ = interpolate(a, a.state_dict(), b.state_dict(), batches, [0.0, 0.25, 1.0])
    mixed = copy.deepcopy(a)
    mixed.load_state_dict({k: (0.75 * v + 0.25 * b.state_dict()[k]) if v.is_floating_point() else v
                           for k, v in a.state_dict().items()})
    assert losses == pytest.approx([direct_loss(a, batches), direct_loss(mixed, batches), direct_loss(b, batches)],
                                   rel=1e-6)


def test_filter_relative_noise_has_the_stated_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 3), nn.LayerNorm(3))
    with torch.no_grad():
        model[0].weight[0] *= 10  # filters of very different norms
    generator = torch.Generator().manual_seed(1)
    noise = gaussian_noise(model, 0.1, generator, "filter")
    ratios = noise["0.weight"].norm(dim=1) / model[0].weight.detach().norm(dim=1)
    np.testing.assert_allclose(ratios.numpy(), 0.1, rtol=0.15)  # 400 entries per filter: ~4% noise
    assert all(torch.count_nonzero(noise[n]) == 0 for n in ("0.bias", "1.weight", "1.bias"))
    absolute = gaussian_noise(model, 0.1, generator, "absolute")["0.weight"]
    assert float(absolute.std()) == pytest.approx(0.1, rel=0.05)


def test_filter_relative_perturbation_is_invariant_to_rescaling_before_batchnorm(batches):
    # Scaling a conv's filters by c (and BN's running statistics to match) leaves the
    # function unchanged (Dinh et al. 2017): filter-relative noise sees the same model,
    # absolute noise a flatter one.
    model = conv_model()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight.mul_(5.0)
        scaled[0].bias.mul_(5.0)
        scaled[1].running_mean.mul_(5.0)
        scaled[1].running_var.mul_(25.0)
    scaled[1].eps = model[1].eps * 25.0
    assert direct_loss(scaled, batches) == pytest.approx(direct_loss(model, batches), rel=1e-5)
    relative = [gaussian_perturbed(m, batches, 0.2, draws=3, seed=4)["loss"] for m in (model, scaled)]
    assert relative[1] == pytest.approx(relative[0], rel=1e-5)
    absolute = [gaussian_perturbed(m, batches, 0.2, draws=3, seed=4, scale="absolute")["loss"]
                for m in (model, scaled)]
    assert abs(absolute[1] - absolute[0]) > 1e-3


def test_pca_directions_match_numpy_svd():
    model = conv_model()
    g = torch.Generator().manual_seed(5)
    trajectory = [{n: p.detach() + 0.1 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
                  for _ in range(5)]
    d1, d2, info = pca_directions(model, trajectory)
    kept = [n for n, p in model.named_parameters() if p.ndim > 1]
    rows = np.stack([np.concatenate([(s[n] - dict(model.named_parameters())[n]).detach().numpy().ravel()
                                     for n in kept]) for s in trajectory])
    _, singular, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    for direction, component in zip((d1, d2), vt[:2]):
        flat = np.concatenate([direction[n].numpy().ravel() for n in kept])
        assert abs(float(flat @ component)) == pytest.approx(1.0, rel=1e-5)  # the same axis, either sign
        assert torch.count_nonzero(direction["0.bias"]) == 0
    np.testing.assert_allclose(info["explained_variance_ratio"], (singular[:2] ** 2) / (singular ** 2).sum(),
                               rtol=1e-5)
    flat1 = np.concatenate([d1[n].numpy().ravel() for n in kept])
    np.testing.assert_allclose(np.asarray(info["coordinates"])[:, 0], rows @ flat1, rtol=1e-5, atol=1e-6)


def test_analyzers_return_json_and_figures(batches):
    model = conv_model()
    result = LossLandscape(points=3, grid=3).run(model, batches)
    json.dumps(result.metrics, allow_nan=False)
    assert result.metrics["loss_1d"][1] == pytest.approx(evaluate(model, batches)[0], rel=1e-6)
    assert set(result.figures) == {"landscape_1d", "landscape_contour", "landscape_surface"}
    trajectory = [{n: p.detach() * (1 + 0.1 * i) for n, p in model.named_parameters()} for i in range(1, 4)]
    pca = LossLandscape(points=3, grid=3, directions="pca").run(model, batches, trajectory=trajectory)
    assert len(pca.metrics["coordinates"]) == 3 and pca.metrics["directions"] == "pca"
    with pytest.raises(VitsamError, match="trajectory"):
        LossLandscape(directions="pca").run(model, batches)
    with pytest.raises(VitsamError, match="valid choices"):
        LossLandscape(directions="hessain").run(model, batches)
    rows = GaussianPerturbation(sigmas=(0.0, 0.1), draws=2).run(model, batches).metrics["perturbed"]
    assert rows[0]["loss"] == pytest.approx(evaluate(model, batches)[0], rel=1e-6) and rows[0]["draws"] == 1
    assert rows[1]["sigma_scale"] == "filter" and rows[1]["draws"] == 2
