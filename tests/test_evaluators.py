"""The evaluator protocol: options, the cache keyed on weights and options, training-time evals."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitsam import presets
from vitsam.errors import VitsamError
from vitsam.evaluators import protocol
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint
from vitsam.train.loop import train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")


def smoke(*overrides):
    return presets.resolve("smoke", None, ["train.stop_after_steps=4", *overrides])


def test_options_are_converted_and_checked():
    opts = protocol.configure("hessian", {"top_k": "3", "tol": "1/100"})
    assert opts.top_k == 3 and opts.tol == pytest.approx(0.01)
    with pytest.raises(VitsamError, match="top_kk.*top_k"):
        protocol.configure("hessian", {"top_kk": 1})
    with pytest.raises(VitsamError, match="no_such.*hessian"):
        protocol.configure("no_such", {})
    with pytest.raises(VitsamError, match="hessian.top_k"):
        protocol.configure("hessian", {"top_k": "many"})


def test_every_evaluator_declares_options_a_section_and_a_runner():
    for name, entry in protocol.evaluators().items():
        assert entry.name == name and entry.section and callable(entry.run)
        protocol.configure(name)  # defaults construct


def test_results_are_cached_on_weights_and_options_and_never_stale(tmp_path):
    run = train(smoke(), tmp_path / "run")
    messages = []
    first = protocol.evaluate_run(run, ["sparsity"], log=messages.append)["sparsity"]
    again = protocol.evaluate_run(run, ["sparsity"], log=messages.append)["sparsity"]
    assert again == first and "reusing" in messages[-1]
    other = protocol.evaluate_run(run, ["sparsity"], {"sparsity": {"examples": 32}}, log=messages.append)
    assert other["sparsity"]["key"] != first["key"] and "reusing" not in messages[-1]
    # train the run further: the cached result belongs to older weights and is not reused
    train(smoke("train.stop_after_steps=8"), run, resume=True)
    newer = protocol.evaluate_run(run, ["sparsity"], log=messages.append)["sparsity"]
    assert newer["step"] == 8 and newer["weights"] != first["weights"]
    assert newer["per_block"] != first["per_block"]
    assert protocol.find_result(run, "sparsity", examples=256)["step"] == 8
    # any_options (the report over runs measured before): a result for these weights answers
    kept = protocol.measure(run, [("sparsity", {"examples": 48})], log=messages.append, any_options=True)[0]
    assert kept == newer and "its own options" in messages[-1]
    fresh = protocol.measure(run, [("hessian", {"examples": 8, "subsets": 0, "max_steps": 3, "density_steps": 3,
                                                "density_vectors": 1, "trace_samples": 0, "blocks": False,
                                                "split": "train"})], log=messages.append, any_options=True)[0]
    assert fresh["options"]["examples"] == 8 and "reusing" not in messages[-1]   # nothing saved: measured


def test_accuracy_evaluator_matches_the_training_loops_final_evaluation(tmp_path):
    run = train(presets.resolve("smoke", None, ["train.epochs=0.25"]), tmp_path / "run")
    record = protocol.evaluate_run(run, ["accuracy"], log=lambda _: None)["accuracy"]
    summary = json.loads((run / "eval.json").read_text())
    assert record["accuracy"] == pytest.approx(summary["test_accuracy"])
    arrays = protocol.result_arrays(run, record)
    with np.load(run / "predictions.npz", allow_pickle=False) as saved:
        assert np.array_equal(arrays["predicted"], saved["test_predicted"])
    assert record["interval"][0] < record["accuracy"] < record["interval"][1]


def test_training_runs_scheduled_evaluators_into_the_metrics_log(tmp_path):
    cfg = smoke('evals={"sparsity": {"every_epochs": 0.1, "examples": 32}}')  # 18 steps per epoch: every 2
    run = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "eval/sparsity"]
    assert steps == [2, 4]
    with pytest.raises(VitsamError, match="every_epochs"):
        train(smoke('evals={"sparsity": {"every_epochs": 0}}'), tmp_path / "bad")


def test_stratified_examples_are_prefixes_and_balanced():
    from vitsam.data.subsets import stratified_order

    labels = torch.arange(10).repeat_interleave(100)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.bincount(labels[order[:50]], minlength=10).tolist() == [5] * 10
    assert torch.equal(order, stratified_order(labels, seed=3))
    uneven = torch.cat([torch.zeros(900), torch.ones(100)]).long()
    first = uneven[stratified_order(uneven, seed=0)[:100]]
    assert 85 <= int((first == 0).sum()) <= 95  # proportional to the class sizes


def test_tensorboard_events_hold_training_scalars_and_evaluator_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(smoke('evals={"sparsity": {"every_epochs": 0.2, "examples": 32}}', "train.log_every=1"),
                tmp_path / "run")
    protocol.evaluate_run(run, ["perturbed"], {"perturbed": {"examples": 32, "sigmas": "0,0.01"}},
                          log=lambda _: None)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert {"sparsity/sparsity", "perturbed/perturbed_loss"} <= set(tags["images"])
    assert events.Images("sparsity/sparsity")[0].step == 4


def test_weights_hash_covers_every_tensor_including_batchnorm_counters():
    from vitsam.models import create_model

    model = create_model("resnet_tiny", num_classes=10)
    before = protocol.weights_hash(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.num_batches_tracked += 1  # a 0-d integer buffer
    assert protocol.weights_hash(model) != before


TINY_GEOMETRY = {
    "hessian": {"examples": 8, "subsets": 2, "max_steps": 4, "density_steps": 4, "density_vectors": 1,
                "trace_samples": 1, "block_max_steps": 2},
    "ggn": {"examples": 8, "subsets": 0, "max_steps": 4, "density_steps": 4, "density_vectors": 1, "trace_samples": 1},
    "ntk": {"blocks": 2, "block_size": 4, "kernels": "trace,full"},
    "landscape": {"points": 3, "grid": 2, "examples": 8},
    "perturbed": {"sigmas": "0,0.1", "draws": 1, "examples": 8},
    "sharpness": {"examples": 8, "m": 4, "steps": 1},
    "sparsity": {"examples": 8},
    "attention": {"images": 2},
}


@pytest.mark.parametrize("family", ["vit_tiny", "mixer_tiny", "resnet_tiny"])
def test_every_geometry_evaluator_runs_on_every_model_family(family):
    """Each analyzer gives strict-JSON metrics on each family, or says why it skips."""
    from vitsam.analysis import cross_entropy
    from vitsam.jsonfile import dumps
    from vitsam.models import create_model

    assert set(TINY_GEOMETRY) == set(protocol.names_in("geometry"))  # a new analyzer joins this test
    torch.manual_seed(0)
    model = create_model(family, depth=2) if family != "resnet_tiny" else create_model(family)
    images = torch.rand(8, 1, 28, 28)
    batches = [(images[:4], torch.arange(4)), (images[4:], torch.arange(4, 8))]
    for name, options in TINY_GEOMETRY.items():
        analysis = protocol.configure(name, options).run(model.eval(), batches, cross_entropy)
        metrics = json.loads(dumps(analysis.metrics))
        if "skipped" in metrics:
            assert (name, family) in {("sparsity", "resnet_tiny"), ("attention", "mixer_tiny"),
                                      ("attention", "resnet_tiny")}, metrics["skipped"]
        else:
            assert metrics, name
