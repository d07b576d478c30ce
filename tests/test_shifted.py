"""Stored corrupted layouts, shifted test sets, metrics, the runner, the CLI and the
report section, on tiny fixtures built here. The fixtures use an "oracle" model that
reads the class from the image's grey level, so a wrong label mapping shows at once."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitsam.errors import VitsamError
from vitsam.robustness.evaluate import (ALEXNET_ERRORS, CORRUPTIONS, corrupted_sets, corruption_errors,
                                        evaluate_corrupted_sets, evaluate_corruptions, summarize_corruptions)
from vitsam.robustness.shifted import evaluate_shift, parse_shift


class Oracle(nn.Module):
    """Predicts class k for images of mean grey level (k + 0.5) / K; optional logit bonus."""

    def __init__(self, classes, bonus=None):
        super().__init__()
        self.centres = nn.Parameter((torch.arange(classes) + 0.5) / classes, requires_grad=False)
        self.bonus = torch.zeros(classes) if bonus is None else bonus

    def forward(self, x):
        level = x.mean((1, 2, 3))[:, None]
        return -1000 * (level - self.centres) ** 2 + self.bonus


def level(k, classes):
    return round((k + 0.5) / classes * 255)


def save_png(path, value, size=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value,) * 3).save(path)


# --------------------------------------------------------------------------- shifted sets

def test_imagenet_v2_folders_are_integer_class_indices(tmp_path):
    classes = 12
    for k in (0, 2, 10, 11):                       # string order would put 10 and 11 before 2
        save_png(tmp_path / str(k) / "a.png", level(k, classes))
        save_png(tmp_path / str(k) / "b.png", level(k, classes))
    result = evaluate_shift(Oracle(classes), "imagenet-v2", tmp_path, img_size=8)
    assert result["accuracy"] == 1.0 and result["num_images"] == 8


def test_imagenet_r_scores_only_its_classes(tmp_path):
    wnids = [f"n{i:08d}" for i in range(10)]
    subset = [wnids[1], wnids[4], wnids[7]]
    for wnid in subset:
        save_png(tmp_path / wnid / "x.png", level(wnids.index(wnid), 10))
    # a class outside the subset has the top logit everywhere: the 200-class mask must ignore it
    bonus = torch.zeros(10)
    bonus[5] = 1e6
    model = Oracle(10, bonus)
    assert evaluate_shift(model, "imagenet-r", tmp_path, 8, class_wnids=wnids)["accuracy"] == 1.0
    with pytest.raises(VitsamError, match="not among the model's"):
        evaluate_shift(model, "imagenet-a", tmp_path, 8, class_wnids=wnids[:3])
    with pytest.raises(VitsamError, match="wnids"):
        evaluate_shift(model, "imagenet-a", tmp_path, 8)


def test_real_labels_skip_empty_lists_and_accept_any_listed_label(tmp_path):
    classes = 6
    shown = [0, 4, 2, 3]                           # the class each image looks like
    real = [[0], [], [1, 2], [5]]                  # image 2 skipped; image 4 wrong
    for i, k in enumerate(shown, 1):
        save_png(tmp_path / "val" / f"n0000000{k}" / f"ILSVRC2012_val_0000000{i}.png", level(k, classes))
    (tmp_path / "real.json").write_text(json.dumps(real))
    result = evaluate_shift(Oracle(classes), "real", tmp_path, 8)
    assert result["num_images"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    (tmp_path / "real.json").write_text(json.dumps(real[:3]))
    with pytest.raises(VitsamError, match="label lists"):
        evaluate_shift(Oracle(classes), "real", tmp_path, 8)


def test_parse_shift():
    assert parse_shift("imagenet-r:/data/r")[0] == "imagenet-r"
    with pytest.raises(VitsamError, match="imagenet-v2"):
        parse_shift("imagenet-x:/data")
    with pytest.raises(VitsamError, match="path"):
        parse_shift("real")


# --------------------------------------------------------------------------- stored corrupted sets

def test_imagenet_c_tree(tmp_path):
    classes = 3
    for name in ("fog", "contrast"):
        for severity in (1, 2):
            for k, wnid in enumerate(["n01", "n02", "n03"]):
                save_png(tmp_path / name / str(severity) / wnid / "img.png", level(k, classes))
    result = evaluate_corrupted_sets(Oracle(classes), corrupted_sets("imagenet-c", tmp_path, 8), "imagenet-c")
    assert result["accuracy"] == {"fog": {"1": 1.0, "2": 1.0}, "contrast": {"1": 1.0, "2": 1.0}}
    assert result["mean_accuracy"] == 1.0 and result["num_images"] == 3
    assert "mce_alexnet" in result


def test_cifar_c_npy_blocks_are_severities(tmp_path):
    classes, per_block = 4, 6
    labels = np.tile(np.arange(per_block) % classes, 5).astype(np.uint8)
    images = np.stack([np.full((8, 8, 3), level(k, classes), np.uint8) for k in labels])
    images[2 * per_block:3 * per_block] = 255      # severity 3 ruined: everything looks like the last class
    np.save(tmp_path / "snow.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    result = evaluate_corrupted_sets(Oracle(classes), corrupted_sets("cifar-c", tmp_path, 8), "cifar-c")
    snow = result["accuracy"]["snow"]
    assert snow["1"] == snow["2"] == snow["4"] == snow["5"] == 1.0
    assert snow["3"] == pytest.approx(np.mean(labels[:per_block] == classes - 1))


def test_mnist_c_layout_and_missing_files(tmp_path):
    classes = 5
    labels = np.arange(10) % classes
    images = np.stack([np.full((28, 28, 1), level(k, classes), np.uint8) for k in labels])
    (tmp_path / "shot_noise").mkdir()
    np.save(tmp_path / "shot_noise" / "test_images.npy", images)
    np.save(tmp_path / "shot_noise" / "test_labels.npy", labels)
    result = evaluate_corrupted_sets(Oracle(classes), corrupted_sets("mnist-c", tmp_path, 28), "mnist-c")
    assert result["accuracy"] == {"shot_noise": {"1": 1.0}}
    (tmp_path / "fog").mkdir()
    with pytest.raises(VitsamError, match="test_images.npy"):
        list(corrupted_sets("mnist-c", tmp_path, 28))
    with pytest.raises(VitsamError, match="cifar-c"):
        list(corrupted_sets("tiny-c", tmp_path, 28))


# --------------------------------------------------------------------------- metrics

def test_summary_means_and_mce_by_hand():
    correct = {"fog": {1: 8, 2: 6}, "snow": {1: 4, 2: 2}}
    total = {"fog": {1: 10, 2: 10}, "snow": {1: 10, 2: 10}}
    summary = summarize_corruptions(correct, total)
    assert summary["per_corruption"] == pytest.approx({"fog": 0.7, "snow": 0.3})
    assert summary["per_severity"] == pytest.approx({"1": 0.6, "2": 0.4})
    assert summary["mean_accuracy"] == pytest.approx(0.5)
    baseline = summarize_corruptions({"fog": {1: 5, 2: 5}, "snow": {1: 5, 2: 0}}, total)
    ce = corruption_errors(summary, baseline)
    # fog: (0.2 + 0.4) / (0.5 + 0.5); snow: (0.6 + 0.8) / (0.5 + 1.0)
    assert ce["ce"] == pytest.approx({"fog": 0.6, "snow": 1.4 / 1.5})
    assert ce["mce"] == pytest.approx((0.6 + 1.4 / 1.5) / 2)
    full = {"per_corruption": {name: 0.5 for name in CORRUPTIONS}}
    alexnet = corruption_errors(full, "alexnet")
    assert alexnet["mce"] == pytest.approx(np.mean([0.5 / ALEXNET_ERRORS[n] for n in CORRUPTIONS]))


def test_evaluate_corruptions_on_the_fly_is_reproducible():
    classes = 4
    labels = torch.arange(8) % classes
    images = ((labels.float() + 0.5) / classes).view(-1, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    model = Oracle(classes)
    first = evaluate_corruptions(model, batches, ["contrast", "gaussian_noise"], [1, 5], seed=3)
    again = evaluate_corruptions(model, batches, ["contrast", "gaussian_noise"], [1, 5], seed=3)
    assert first == again
    assert first["clean_accuracy"] == 1.0 and first["num_images"] == 8 and first["params"] == "cifar"
    assert first["accuracy"]["contrast"] == {"1": 1.0, "5": 1.0}      # contrast keeps a flat image
    values = [a for accs in first["accuracy"].values() for a in accs.values()]
    assert first["mean_accuracy"] == pytest.approx(np.mean(values))
    json.dumps(first)
    with pytest.raises(VitsamError, match="snow"):
        evaluate_corruptions(model, batches, ["snowy"])


# --------------------------------------------------------------------------- runner, CLI, report

def make_run(root, rho, seed):
    """A real vit_tiny run directory on Fashion-MNIST (untrained weights)."""
    from vitsam import config as config_lib
    from vitsam.models import create_model

    torch.manual_seed(seed)
    root.mkdir(parents=True)
    cfg = config_lib.Config()
    cfg.model.name, cfg.data.dataset, cfg.data.img_size, cfg.sam.rho = "vit_tiny", "fashion_mnist", 28, rho
    config_lib.save(cfg, root / "config.json")
    args = {"name": "vit_tiny", "num_classes": 10, "img_size": 28, "in_chans": 1, "overrides": {}}
    (root / "model.json").write_text(json.dumps(args))
    model = create_model("vit_tiny", num_classes=10, img_size=28, in_chans=1)
    (root / "checkpoints").mkdir()
    torch.save({"model": model.state_dict(), "step": 7}, root / "checkpoints" / "last.pt")
    return root


def test_runner_cli_and_report(tmp_path, capsys):
    from vitsam.robustness.report import robustness_section
    from vitsam.robustness.runner import add_cli, run_robustness

    vanilla, sam = make_run(tmp_path / "vanilla", 0.0, 0), make_run(tmp_path / "sam", 0.1, 1)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    for run in (vanilla, sam):
        args = parser.parse_args(["robust", str(run), "--corruptions", "contrast", "fog", "--severities", "1,5",
                                  "--pgd", "1/255,4/255", "--pgd-steps", "2", "--max-images", "20"])
        assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "mean corrupted accuracy" in printed and "pgd_linf" in printed
    stored = json.loads((vanilla / "robustness" / "corruptions.json").read_text())
    assert set(stored["accuracy"]) == {"contrast", "fog"} and stored["num_images"] == 20
    assert stored["settings"]["step"] == 7
    # same settings: reused, not recomputed; force recomputes
    (vanilla / "robustness" / "corruptions.json").write_text(json.dumps({**stored, "marker": 1}))
    again = run_robustness(vanilla, ["contrast", "fog"], [], severities=[1, 5], max_images=20)
    assert again["corruptions"]["marker"] == 1
    forced = run_robustness(vanilla, ["contrast", "fog"], [], severities=[1, 5], max_images=20, force=True)
    assert "marker" not in forced["corruptions"]
    section = robustness_section([("vit vanilla", vanilla), ("vit SAM", sam)])
    html = section.to_html()
    assert "SAM minus vanilla" in html and html.count("<img") == 2 and "4/255" in html
