"""Filter-normalized directions, 1-D landscapes, interpolation and Gaussian perturbation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.analysis import evaluate
from vitsam.analysis.landscape import (GaussianPerturbation, LossLandscape,
                                       filter_normalized_direction, interpolate, loss_curve)


pytestmark = pytest.mark.usefixtures("single_thread")


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


def make_run(root, name, rho, data, seed):
    """A run directory as the training loop writes it, with a tiny ViT."""
    from vitsam import config as config_lib
    from vitsam import presets
    from vitsam.models import create_model
    from vitsam.train.checkpoint import atomic_torch_save, atomic_write_json

    run_dir = root / name
    cfg = presets.get_preset("vit_tiny_fmnist")
    cfg.data.dataset, cfg.sam.rho = f"arrays:{data}", rho
    run_dir.mkdir(parents=True)
    config_lib.save(cfg, run_dir / "config.json")
    atomic_write_json({"name": "vit_tiny", "num_classes": 10, "img_size": 28, "in_chans": 1}, run_dir / "model.json")
    torch.manual_seed(seed)
    model = create_model("vit_tiny", num_classes=10, img_size=28, in_chans=1)
    atomic_torch_save({"model": model.state_dict(), "step": 7}, run_dir / "checkpoints" / "last.pt")
    atomic_write_json({"test_accuracy": 0.5 + rho}, run_dir / "eval.json")
    return run_dir


def test_analyze_run_resumes_and_the_report_pairs_vanilla_with_sam(tmp_path):
    import numpy as np

    from vitsam.analysis.report import geometry_section
    from vitsam.analysis.runner import analyze_run
    from vitsam.errors import VitsamError

    g = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, images=g.integers(0, 256, (12, 28, 28), dtype=np.uint8), labels=np.arange(12) % 10)
    vanilla, sam = make_run(tmp_path, "vit", 0.0, data, 0), make_run(tmp_path, "vit_sam", 0.1, data, 1)
    tiny = {"hessian": {"examples": 8, "max_steps": 2, "density_steps": 2, "trace_samples": 1,
                        "block_max_steps": 1},
            "ntk": {"blocks": 2, "block_size": 4, "kernels": "sum"},
            "landscape": {"points": 3, "grid": 2, "examples": 8},
            "perturbed": {"sigmas": "0,0.1", "draws": 1, "examples": 8},
            "sparsity": {"examples": 8}, "attention": {"images": 2}}
    for run_dir in (vanilla, sam):
        results = analyze_run(run_dir, options=tiny, examples=12, batch_size=8, device="cpu", log=lambda s: None)
        assert set(results) == {"hessian", "ntk", "landscape", "perturbed", "sparsity", "attention"}
    assert results["hessian"]["step"] == 7 and results["ntk"]["block_size"] == 4
    assert (sam / "analysis" / "landscape_contour.png").is_file()
    stamp = (sam / "analysis" / "hessian.json").stat().st_mtime_ns
    analyze_run(sam, only=["hessian"], device="cpu")  # exists: skipped, not recomputed
    assert (sam / "analysis" / "hessian.json").stat().st_mtime_ns == stamp
    with pytest.raises(VitsamError, match="valid choices"):
        analyze_run(sam, only=["hessain"])
    with pytest.raises(VitsamError, match="valid choices"):
        analyze_run(sam, options={"ntk": {"blokcs": 2}})

    section = geometry_section([("ViT", vanilla), ("ViT-SAM", sam)], device="cpu", log=lambda s: None)
    page = section.to_html()
    assert "Table 1" in page and " \u2192 " in page and page.count("<img") >= 6
    assert (sam / "analysis" / "interpolation.json").is_file()
