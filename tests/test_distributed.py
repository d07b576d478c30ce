"""SAM under DDP with 2 gloo processes launched by torchrun (docs/paper.md, SAM pitfalls 3 and 6).

Each rank perturbs by its own gradient (m-sharpness) unless ``per_rank=False``; only the
final gradient is all-reduced; replicas stay bit-identical; an fp16 overflow on one rank
skips the step on both; a worker killed mid-run is restarted by torchrun and the run
continues from its checkpoint to the weights of an uninterrupted run. Under dropout the
ranks start from the same weights but draw their own masks; evaluation sharded over the
ranks gives exactly what one process gives, also on an odd number of images. The worker
script is tests/distributed_worker.py; the expected updates and evaluations are computed
here, in one process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import distributed_worker as worker
from vitsam.data.build import eval_loader
from vitsam.evaluators.accuracy import evaluate
from vitsam.train.checkpoint import CHECKPOINT, build_model, load_checkpoint, load_run

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(mode: str, out: Path, *flags: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--monitor-interval=0.2", *flags, str(WORKER), mode, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun("steps", out)
    return out, [torch.load(out / f"steps_rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def details_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp_details")
    worker.write_details_data(out / "data.npz")
    torchrun("details", out)
    return out, [torch.load(out / f"details_rank{r}.pt", weights_only=True) for r in (0, 1)]


# ---------------------------------------------------------------------- by hand, one process

def loss_grad(weights: list[torch.Tensor], rank: int, step: int) -> list[torch.Tensor]:
    model = worker.tiny_mlp()
    names = [name for name, _ in model.named_parameters()]
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    x, y = worker.rank_batch(rank, step)
    loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
    return list(torch.autograd.grad(loss, leaves))


def norm(tensors):
    return torch.sqrt(sum((t ** 2).sum() for t in tensors))


def mean(per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [sum(ts) / len(ts) for ts in zip(*per_rank)]


def sam_by_hand(per_rank: bool) -> list[list[torch.Tensor]]:
    """SGD-SAM on 2 ranks. Per rank: e_r = rho g_r / ||g_r||, g_r from rank r's batch alone;
    global: e = rho g / ||g||, g the mean over ranks. Update: w - lr * mean_r grad L_r(w + e_r)."""
    w, history = [p.detach().clone() for p in worker.tiny_mlp().parameters()], []
    for step in range(worker.STEPS):
        grads = [loss_grad(w, r, step) for r in (0, 1)]
        ascent = grads if per_rank else [mean(grads)] * 2
        perturbed = [[wi + worker.RHO * gi / norm(g) for wi, gi in zip(w, g)] for g in ascent]
        final = mean([loss_grad(perturbed[r], r, step) for r in (0, 1)])
        w = [wi - worker.LR * gi for wi, gi in zip(w, final)]
        history.append(w)
    return history


def assert_close_history(got, want, atol=1e-12):
    for step, (got_w, want_w) in enumerate(zip(got, want, strict=True)):
        for g, e in zip(got_w, want_w, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=atol, msg=f"step {step + 1}")


# ---------------------------------------------------------------------- tests

@pytest.mark.parametrize("scenario", ["per_rank", "global", "per_rank_accumulated", "gsam", "looksam", "asam",
                                      "fp16_overflow_pass1", "fp16_overflow_pass2"])
def test_replicas_stay_bit_identical_step_after_step(steps_run, scenario):
    rank0, rank1 = (results[scenario] for results in steps_run[1])
    history0, history1 = (r["weights"] if isinstance(r, dict) else r for r in (rank0, rank1))
    for w0, w1 in zip(history0, history1, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(w0, w1))


def test_per_rank_perturbation_equals_the_math_by_hand(steps_run):
    got = steps_run[1][0]
    assert_close_history(got["per_rank"], sam_by_hand(per_rank=True))
    # 2 micro-batches per rank: the same update, the ascent still per rank
    assert_close_history(got["per_rank_accumulated"], sam_by_hand(per_rank=True))


def test_global_switch_perturbs_by_the_all_reduced_gradient(steps_run):
    got = steps_run[1][0]
    assert_close_history(got["global"], sam_by_hand(per_rank=False))
    gap = norm([a - b for a, b in zip(sam_by_hand(True)[-1], sam_by_hand(False)[-1])])
    assert gap > 1e-4, "the two perturbations must lead to measurably different weights"


@pytest.mark.parametrize("overflowing_pass", [1, 2])
def test_fp16_overflow_on_one_rank_skips_the_step_on_all_ranks(steps_run, overflowing_pass):
    """Rank 1 alone overflows: in pass 1 its gradient is still its own (no all-reduce yet),
    so only the ranks' agreement keeps rank 0 from stepping."""
    for results in steps_run[1]:
        record = results[f"fp16_overflow_pass{overflowing_pass}"]
        assert record["skipped"] == [True, False]
        assert record["scale"] == [2.0 ** 15, 2.0 ** 15]
        assert record["base_state"][0] == 0  # AdamW never stepped
        assert all(torch.equal(a, b) for a, b in zip(record["weights"][0], record["initial"]))
        assert not any(torch.equal(a, b) for a, b in zip(record["weights"][1], record["initial"]))


def test_killed_worker_is_restarted_and_resumes_from_the_checkpoint(steps_run, tmp_path):
    out, _ = steps_run
    torchrun("crash", tmp_path, "--max-restarts=1")
    # the first attempt died in step CRASH_AT; the checkpoint of step 3 came back
    assert (tmp_path / "calls_attempt0_rank1").read_text() == str(worker.CRASH_AT)
    assert (tmp_path / "calls_attempt1_rank0").read_text() == "6"  # steps 4..9, not 1..9
    full, part = (load_checkpoint(d / CHECKPOINT) for d in (out / "full", tmp_path / "part"))
    assert full["step"] == part["step"] == 9
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    for key, value in full["optimizer"]["base"]["state"].items():
        assert torch.equal(value["exp_avg"], part["optimizer"]["base"]["state"][key]["exp_avg"])
    steps = [line for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(steps) == 9, "rank 0 alone logs, and the restart dropped the records after step 3"


# ---------------------------------------------------------------------- dropout and sharded evaluation

def test_ranks_start_from_the_same_weights(details_run):
    """Built before DDP's broadcast, so a per-rank seed before the model would show here."""
    out, (rank0, rank1) = details_run
    torch.manual_seed(json.loads((out / "run" / "config.json").read_text())["train"]["seed"])
    expected = build_model(json.loads((out / "run" / "model.json").read_text())).state_dict()
    assert rank0["initial"].keys() == rank1["initial"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(rank0["initial"][key], value), key
        assert torch.equal(rank1["initial"][key], value), key


def test_each_rank_draws_its_own_dropout_masks(details_run):
    out, (rank0, rank1) = details_run
    masks0, masks1 = rank0["masks"], rank1["masks"]
    # pos_drop, and per block the attention projection's and the MLP's two dropouts
    depth = worker.details_config(out).model.overrides["depth"]
    assert len(masks0) == 1 + 3 * depth and masks0.keys() == masks1.keys()
    for name in masks0:
        a, b = masks0[name], masks1[name]
        assert a["dropped"].shape == b["dropped"].shape, name  # the same step, batches of the same size
        for mask in (a, b):
            rate = mask["dropped"].sum().item() / mask["given"].sum().item()
            assert abs(rate - worker.DROP_RATE) < 0.05, (name, rate)  # dropout is really on
        both = a["given"] & b["given"]  # where both inputs were non-zero, zeros are dropout's
        assert both.float().mean() > 0.9, name
        assert not torch.equal(a["dropped"][both], b["dropped"][both]), f"{name}: both ranks drew the same mask"


def one_process_evaluation(out: Path, model, examples: int | None, batch_size: int):
    cfg = worker.details_config(out)
    loader = eval_loader(cfg.data, "test", batch_size, examples=examples)
    labels = loader.source.labels.numpy()
    return evaluate(model, loader, torch.device("cpu"), keep_predictions=True), labels


def assert_same_evaluation(sharded: dict, single, labels: np.ndarray) -> None:
    assert sharded["images"] == single.images == len(labels)  # no image twice, none dropped
    assert np.array_equal(sharded["labels"], labels), "the images come back in split order"
    assert np.array_equal(sharded["predicted"], single.predicted), "per-image predictions"
    correct = int((sharded["predicted"] == sharded["labels"]).sum())
    assert correct == int((single.predicted == single.labels).sum())
    assert sharded["accuracy"] == single.accuracy == correct / len(labels)
    assert sharded["loss"] == pytest.approx(single.loss, rel=1e-6)  # float sums in another order


@pytest.mark.parametrize("examples", worker.EVAL_SIZES)
def test_sharded_evaluation_equals_one_process(details_run, examples, single_thread):
    out, ranks = details_run
    single, labels = one_process_evaluation(out, worker.eval_model(), examples, worker.EVAL_BATCH)
    if examples > worker.EVAL_BATCH:  # predictions that vary per image, or a wrong order could go unseen
        assert 0 < single.accuracy < 1 and len(np.unique(single.predicted)) > 1
    for rank in ranks:  # every rank holds the all-reduced result
        assert_same_evaluation({k: v.numpy() if torch.is_tensor(v) else v for k, v in rank["eval"][examples].items()},
                               single, labels)


def test_training_run_final_evaluation_is_sharded_exactly(details_run, single_thread):
    """The loop's own sharded evaluation (eval.json, predictions.npz) of the odd test set."""
    out, _ = details_run
    run = load_run(out / "run")
    single, labels = one_process_evaluation(out, run.model, None, 1000)  # other batches than the run's
    summary = json.loads((out / "run" / "eval.json").read_text())
    with np.load(out / "run" / "predictions.npz", allow_pickle=False) as saved:
        sharded = {"accuracy": summary["test_accuracy"], "loss": summary["test_loss"],
                   "images": summary["test_images"], "predicted": saved["test_predicted"],
                   "labels": saved["test_labels"]}
    assert summary["devices"] == 2 and len(labels) == worker.TEST_IMAGES
    assert_same_evaluation(sharded, single, labels)
