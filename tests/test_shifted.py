"""Stored corrupted layouts, shifted test sets, the runner, the CLI and the report section,
on tiny fixtures built here. The fixtures use "oracle" models that read the class from
the image's colour, so a wrong label mapping shows at once."""
import argparse
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitsam.errors import VitsamError
from vitsam.robustness.correctness import unpack
from vitsam.robustness.evaluate import evaluate_corrupted_sets
from vitsam.robustness.layouts import MNIST_C_CORRUPTIONS, corrupted_sets
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
    Image.new("RGB", (size, size), value if isinstance(value, tuple) else (value,) * 3).save(path)


# --------------------------------------------------------------------------- ImageNet-sized class lists

WNIDS = [f"n{i:08d}" for i in range(1000)]          # sorted: the standard ImageNet order


def colour(k):
    """An RGB colour coding standard class index k (0..1023)."""
    return (k // 32 * 8 + 4, k % 32 * 8 + 4, 128)


class ColourOracle(nn.Module):
    """Recognises the standard class coded in the colour and puts its logit where the
    model's own class list (``classes``, any order) has that wnid."""

    def __init__(self, classes, bonus=None):
        super().__init__()
        self.where = nn.Parameter(torch.tensor([classes.index(w) for w in WNIDS]), requires_grad=False)
        self.classes = len(classes)
        self.bonus = bonus

    def forward(self, x):
        r, g = (x[:, :2].mean((2, 3)) * 255 - 4).div(8).round().long().unbind(1)
        logits = torch.nn.functional.one_hot(self.where[r * 32 + g], self.classes).float()
        return logits if self.bonus is None else logits + self.bonus


def shuffled(items, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# --------------------------------------------------------------------------- shifted sets

def test_imagenet_v2_folders_are_standard_indices_mapped_to_the_models_order(tmp_path):
    classes = shuffled(WNIDS)                      # the model's logit order differs from the standard one
    for k in (0, 2, 10, 11, 999):                  # string order would put 10 and 11 before 2
        save_png(tmp_path / str(k) / "a.png", colour(k))
        save_png(tmp_path / str(k) / "b.png", colour(k))
    result = evaluate_shift(ColourOracle(classes), "imagenet-v2", tmp_path, 8, classes)
    assert result["accuracy"] == 1.0 and result["num_images"] == 10
    assert unpack(result["correct"], 10).all() and result["interval"][1] == pytest.approx(1.0)
    with pytest.raises(VitsamError, match="1000 ImageNet wnids"):
        evaluate_shift(ColourOracle(classes), "imagenet-v2", tmp_path, 8, classes[:999])
    with pytest.raises(VitsamError, match="needs the model's classes"):
        evaluate_shift(ColourOracle(classes), "imagenet-v2", tmp_path, 8)
    (tmp_path / "1000").mkdir()
    with pytest.raises(VitsamError, match="0..999"):
        evaluate_shift(ColourOracle(classes), "imagenet-v2", tmp_path, 8, classes)


def test_imagenet_r_needs_its_200_classes_and_scores_only_them(tmp_path):
    classes = shuffled(WNIDS, seed=1)
    subset = sorted(random.Random(2).sample(range(1000), 200))
    for k in subset:
        save_png(tmp_path / WNIDS[k] / "x.png", colour(k), size=4)
    # a class outside the subset has the top logit everywhere: the 200-class mask must ignore it
    outside = next(k for k in range(1000) if k not in subset)
    bonus = torch.zeros(1000)
    bonus[classes.index(WNIDS[outside])] = 10.0
    model = ColourOracle(classes, bonus)
    result = evaluate_shift(model, "imagenet-r", tmp_path, 4, classes)
    assert result["accuracy"] == 1.0 and result["num_images"] == 200
    without = [c for c in classes if c != WNIDS[subset[5]]]
    with pytest.raises(VitsamError, match=f"not among the model's 999 classes: {WNIDS[subset[5]]}"):
        evaluate_shift(model, "imagenet-a", tmp_path, 4, without)
    (tmp_path / WNIDS[outside]).mkdir()
    with pytest.raises(VitsamError, match="should hold 200 class folders, found 201"):
        evaluate_shift(model, "imagenet-a", tmp_path, 4, classes)


def test_real_labels_are_standard_indices_and_skip_empty_lists(tmp_path):
    classes = shuffled(WNIDS, seed=3)
    shown = [0, 4, 2, 3]                           # the standard class each image looks like
    real = [[0], [], [1, 2], [5]]                  # image 2 skipped; image 4 wrong
    for i, k in enumerate(shown, 1):
        save_png(tmp_path / "val" / WNIDS[k] / f"ILSVRC2012_val_0000000{i}.png", colour(k))
    (tmp_path / "real.json").write_text(json.dumps(real))
    result = evaluate_shift(ColourOracle(classes), "real", tmp_path, 8, classes)
    assert result["num_images"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert unpack(result["correct"], 3).tolist() == [True, True, False]
    (tmp_path / "real.json").write_text(json.dumps(real[:3]))
    with pytest.raises(VitsamError, match="label lists"):
        evaluate_shift(ColourOracle(classes), "real", tmp_path, 8, classes)


def test_parse_shift():
    assert parse_shift("imagenet-r:/data/r")[0] == "imagenet-r"
    with pytest.raises(VitsamError, match="imagenet-v2"):
        parse_shift("imagenet-x:/data")
    with pytest.raises(VitsamError, match="path"):
        parse_shift("real")


# --------------------------------------------------------------------------- stored corrupted sets

def test_imagenet_c_folders_are_mapped_by_name_not_position(tmp_path):
    classes = ["n03", "n01", "n02"]                # the model's logit order
    for name in ("fog", "contrast"):
        for severity in (1, 2):
            for wnid in classes:
                if (name, severity, wnid) != ("fog", 2, "n01"):      # one class folder missing
                    save_png(tmp_path / name / str(severity) / wnid / "img.png", level(classes.index(wnid), 3))
    result = evaluate_corrupted_sets(Oracle(3), corrupted_sets("imagenet-c", tmp_path, 8, classes=classes),
                                     "imagenet-c")
    assert result["accuracy"] == {"fog": {"1": 1.0, "2": 1.0}, "contrast": {"1": 1.0, "2": 1.0}}
    assert result["cell_n"]["fog"] == {"1": 3, "2": 2} and not result["aligned"]
    assert result["means"]["imagenet_c_15"]["accuracy"] is None
    assert len(result["means"]["imagenet_c_15"]["missing"]) == 13
    assert result["mce_alexnet"]["mce"] is None and "gaussian_noise" in result["mce_alexnet"]["missing"]
    with pytest.raises(VitsamError, match="model's classes"):
        list(corrupted_sets("imagenet-c", tmp_path, 8))
    with pytest.raises(VitsamError, match="'n03' in"):
        list(corrupted_sets("imagenet-c", tmp_path, 8, classes=["n01", "n02"]))
    with pytest.raises(VitsamError, match="snow not found.*found: fog, contrast"):
        list(corrupted_sets("imagenet-c", tmp_path, 8, names=["snow"], classes=classes))


def test_cifar_c_reads_every_file_and_labels_the_standard_ones(tmp_path):
    classes, per_block = 4, 6
    labels = np.tile(np.arange(per_block) % classes, 5).astype(np.uint8)
    images = np.stack([np.full((8, 8, 3), level(k, classes), np.uint8) for k in labels])
    for name in ("snow", "saturate", "mystery"):
        np.save(tmp_path / f"{name}.npy", images)
    ruined = images.copy()
    ruined[2 * per_block:3 * per_block] = 255      # severity 3 ruined: everything looks like the last class
    np.save(tmp_path / "snow.npy", ruined)
    np.save(tmp_path / "labels.npy", labels)
    result = evaluate_corrupted_sets(Oracle(classes), corrupted_sets("cifar-c", tmp_path, 8), "cifar-c")
    assert list(result["accuracy"]) == ["snow", "saturate", "mystery"]
    assert result["groups"] == {"snow": "imagenet-c", "saturate": "imagenet-c-extra", "mystery": "other"}
    snow = result["accuracy"]["snow"]
    assert snow["1"] == snow["2"] == snow["4"] == snow["5"] == 1.0
    assert snow["3"] == pytest.approx(np.mean(labels[:per_block] == classes - 1))
    assert result["aligned"] and result["means"]["evaluated"]["accuracy"] == pytest.approx(
        np.mean([result["per_corruption"][n] for n in ("snow", "saturate", "mystery")]))
    with pytest.raises(VitsamError, match="label 3 is not a class"):
        list(corrupted_sets("cifar-c", tmp_path, 8, classes=["a", "b", "c"]))


def test_mnist_c_reads_its_own_corruptions_and_identity_as_clean(tmp_path):
    classes = 5
    labels = np.arange(10) % classes
    images = np.stack([np.full((28, 28, 1), level(k, classes), np.uint8) for k in labels])
    for name in ("identity", "shot_noise", "zigzag", "canny_edges"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "test_images.npy", images)
        np.save(tmp_path / name / "test_labels.npy", labels)
    np.save(tmp_path / "zigzag" / "test_images.npy", np.full_like(images, 255))   # all look like class 4
    result = evaluate_corrupted_sets(Oracle(classes), corrupted_sets("mnist-c", tmp_path, 28), "mnist-c")
    assert result["accuracy"] == {"shot_noise": {"1": 1.0}, "canny_edges": {"1": 1.0}, "zigzag": {"1": 0.2}}
    assert set(result["groups"].values()) == {"mnist-c"} and result["standard_set"] == "mnist-c"
    assert result["clean_accuracy"] == 1.0 and result["clean_n"] == 10
    mnist = result["means"]["mnist_c_15"]
    assert mnist["accuracy"] is None and len(mnist["missing"]) == 12 and set(mnist["corruptions"]) == set(
        MNIST_C_CORRUPTIONS)
    assert "imagenet_c_15" not in result["means"] and "mce_alexnet" not in result
    (tmp_path / "fog").mkdir()
    with pytest.raises(VitsamError, match="test_images.npy"):
        list(corrupted_sets("mnist-c", tmp_path, 28))
    with pytest.raises(VitsamError, match="cifar-c"):
        list(corrupted_sets("tiny-c", tmp_path, 28))


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


def test_robust_cli_cache_and_report(tmp_path, capsys):
    from vitsam.cli import main
    from vitsam.evaluators.protocol import evaluate_run, find_result
    from vitsam.robustness.report import robustness_section

    vanilla, sam = make_run(tmp_path / "vanilla", 0.0, 0), make_run(tmp_path / "sam", 0.1, 1)
    for run in (vanilla, sam):
        assert main(["robust", str(run), "--corruptions", "contrast", "fog", "--severities", "1,5",
                     "--pgd", "1/255,4/255", "--pgd-steps", "2", "--images", "20", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "corruptions: clean" in printed and "PGD-2 L-inf on 20 images" in printed
    stored = find_result(vanilla, "corruptions")
    assert set(stored["accuracy"]) == {"contrast", "fog"} and stored["num_images"] == 20 and stored["step"] == 7
    # the same options on the same weights: reused, not recomputed; --force recomputes
    options = {"corruptions": {"names": ("contrast", "fog"), "severities": (1, 5), "images": 20}}
    messages = []
    again = evaluate_run(vanilla, ["corruptions"], options, device="cpu", log=messages.append)
    assert again["corruptions"]["finished"] == stored["finished"] and "reusing" in messages[0]
    forced = evaluate_run(vanilla, ["corruptions"], options, force=True, device="cpu", log=messages.append)
    assert "reusing" not in messages[-1] and forced["corruptions"]["accuracy"] == stored["accuracy"]
    section = robustness_section([("vit vanilla", vanilla), ("vit SAM", sam)])
    html = section.to_html()
    assert "SAM minus vanilla" in html and html.count("<img") == 2 and "4/255" in html
    assert "<th>PGD-2 L-inf eps 4/255</th>" in html and "PGD-2 L-inf on 20 test images" in html
    assert "1 restart(s)" in html
    assert "Our finding" in html and "adversarially" in html and "not comparable" in html
    assert "not the same images" not in html and "no per-image data" not in html    # paired cells everywhere
