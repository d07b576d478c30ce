"""End-to-end training runs on a sliver of Fashion-MNIST: run directory, exact resume, CLI."""
import json
import re
from pathlib import Path

import pytest
import torch

from vitsam import presets
from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint, load_run
from vitsam.train.loop import train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")


def smoke(*overrides):
    return presets.resolve("smoke", None, list(overrides))


def weights(run_dir):
    return load_checkpoint(Path(run_dir) / CHECKPOINT)["model"]


def test_run_directory_holds_everything(tmp_path):
    run_dir = train(smoke("sam.rho=0.1"), tmp_path / "run")
    for name in ("config.json", "model.json", "metrics.jsonl", "eval.json", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    for key in ("loss", "accuracy", "lr", "grad_norm", "param_norm", "update_norm", "images_per_s"):
        assert key in train_records[0]
    assert any(r["kind"] == "eval" for r in records)
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["optimizer"]["base"]["state"], "the base optimizer's moments are saved under SAM"
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["test_images"] == 10_000 and 0.1 < summary["test_accuracy"] <= 1
    loaded = load_run(run_dir)  # the run rebuilds from its directory alone
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state["model"].items())


@pytest.mark.parametrize("rho", [0.0, 0.1])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, rho):
    # drop_path exercises the global RNG, which the checkpoint must carry.
    extra = [f"sam.rho={rho}", "model.drop_path_rate=0.1", "train.epochs=2"]
    full = train(smoke(*extra), tmp_path / "full")
    part = tmp_path / "part"
    train(smoke(*extra, "train.stop_after_steps=7"), part)           # stops mid-epoch 1
    assert load_checkpoint(part / CHECKPOINT)["step"] == 7
    train(smoke(*extra, "train.stop_after_steps=25"), part, resume=True)  # stops in epoch 2
    train(smoke(*extra), part, resume=True)
    for key, value in weights(full).items():
        assert torch.equal(value, weights(part)[key]), key
    steps = [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()
             if '"train"' in l]
    assert steps == sorted(set(steps)), "metrics are not duplicated by resuming"


def test_existing_run_needs_resume_and_same_config(tmp_path):
    train(smoke("train.stop_after_steps=2"), tmp_path / "run")
    with pytest.raises(VitsamError, match="--resume"):
        train(smoke(), tmp_path / "run")
    with pytest.raises(VitsamError, match="optim.lr"):
        train(smoke("optim.lr=0.5"), tmp_path / "run", resume=True)


def test_cli_train_eval_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--preset", "smoke", "--set", "train.epochs=0.5", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 9
    assert main(["eval", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "smoke" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--set", "train.epoch=1", "--out", str(tmp_path / "x")]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "not_a_run")]) == 2
    assert "not a vitsam run directory" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert re.search(r"vit_b16\s+vit\s+86\.57M", capsys.readouterr().out)  # 86,567,656 parameters
    assert main(["presets"]) == 0
    assert "vit_tiny_fmnist_sam" in capsys.readouterr().out
