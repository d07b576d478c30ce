"""Corruption summaries, mCE and relative mCE against hand computations and the published
AlexNet constants; per-image correctness packing, intervals and paired differences;
report captions computed from the numbers."""
import inspect
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vitsam.errors import VitsamError
from vitsam.robustness.correctness import Digest, corruption_scores, mean_estimate, pack, paired_gain, unpack
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, corrupt
from vitsam.robustness.evaluate import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, corruption_errors, evaluate_corruptions,
                                        summarize_corruptions)
from vitsam.stats import Z95, accuracy_interval

# AlexNet's ImageNet-C errors, mean over severities, as published in the hendrycks/robustness
# README ("AlexNet ImageNet-C Error", commit 76d9393): a fixed copy
PUBLISHED_ALEXNET = [
    ("gaussian_noise", 0.886428), ("shot_noise", 0.894468), ("impulse_noise", 0.922640),
    ("defocus_blur", 0.819880), ("glass_blur", 0.826268), ("motion_blur", 0.785948), ("zoom_blur", 0.798360),
    ("snow", 0.866816), ("frost", 0.826572), ("fog", 0.819324), ("brightness", 0.564592),
    ("contrast", 0.853204), ("elastic_transform", 0.646056), ("pixelate", 0.717840), ("jpeg_compression", 0.606500),
]


def bits(pattern: str) -> np.ndarray:
    return np.array([c == "1" for c in pattern])


def test_published_constants():
    assert ALEXNET_ERRORS == dict(PUBLISHED_ALEXNET) and tuple(ALEXNET_ERRORS) == CORRUPTIONS
    assert ALEXNET_CLEAN_ERROR == pytest.approx(1 - 0.56522)     # torchvision AlexNet, acc@1 56.522


# --------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_pack_round_trip(n):
    correct = np.random.default_rng(n).random(n) < 0.6
    text = pack(correct)
    assert np.array_equal(unpack(text, n), correct) and len(text) == 4 * math.ceil(math.ceil(n / 8) / 3)
    assert np.array_equal(unpack(pack(torch.from_numpy(correct)), n), correct)
    with pytest.raises(VitsamError, match="expected"):
        unpack(text, n + 8)
    with pytest.raises(VitsamError, match="base64"):
        unpack("not base64!", n)


def test_mean_interval_by_hand():
    scores = np.array([1, 0.5, 0.5, 0, 1, 1, 0.75, 0.25])
    estimate = mean_estimate(scores)
    half = Z95 * np.std(scores, ddof=1) / np.sqrt(8)
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((0.625, 0.625 - half, 0.625 + half))
    wilson = mean_estimate(bits("11010"))
    assert (wilson.low, wilson.high) == (accuracy_interval(3, 5).low, accuracy_interval(3, 5).high)


def test_paired_gain_by_hand():
    a, b = np.array([1, 0.5, 0, 1]), np.array([1, 1, 0.5, 1])
    gain = paired_gain(a, b)
    diff = b - a
    half = Z95 * np.std(diff, ddof=1) / 2
    assert (gain.value, gain.low, gain.high) == pytest.approx((0.25, 0.25 - half, 0.25 + half))
    boolean = paired_gain(bits("1100"), bits("1110"))
    assert boolean.value == 0.25 and boolean.low <= 0.25 <= boolean.high
    with pytest.raises(VitsamError, match="same"):
        paired_gain(a, b[:3])


def test_digest_sees_labels_batches_and_header():
    def digest(batches, *header):
        d = Digest(*header)
        for labels in batches:
            d.update(torch.tensor(labels))
        return d.hexdigest()

    base = digest([[0, 1], [2]], "corruptions", 0)
    assert base == digest([[0, 1], [2]], "corruptions", 0)
    assert base != digest([[0], [1, 2]], "corruptions", 0)       # other batches: other corrupted copies
    assert base != digest([[0, 1], [2]], "corruptions", 1)       # other seed
    assert base != digest([[0, 2], [1]], "corruptions", 0)


# --------------------------------------------------------------------------- summaries

def test_summary_cells_means_and_intervals_by_hand():
    cells = {"fog": {1: bits("1111"), 2: bits("1100")}, "snow": {1: bits("1010"), 2: bits("0000")}}
    summary = summarize_corruptions(cells, aligned=True)
    assert summary["accuracy"] == {"fog": {"1": 1.0, "2": 0.5}, "snow": {"1": 0.5, "2": 0.0}}
    wilson = accuracy_interval(2, 4)
    assert summary["interval"]["fog"]["2"] == [wilson.low, wilson.high]
    assert np.array_equal(unpack(summary["correct"]["snow"]["1"], 4), bits("1010"))
    assert summary["per_corruption"] == pytest.approx({"fog": 0.75, "snow": 0.25})
    assert summary["per_severity"] == pytest.approx({"1": 0.75, "2": 0.25})
    evaluated = summary["means"]["evaluated"]
    assert evaluated["accuracy"] == pytest.approx(0.5) == summary["mean_accuracy"]
    # per image: mean over corruptions of the fraction of severities survived
    per_image = np.array([(1 + .5) / 2, (1 + 0) / 2, (.5 + .5) / 2, (.5 + 0) / 2])
    half = Z95 * np.std(per_image, ddof=1) / 2
    assert evaluated["interval"] == pytest.approx([0.5 - half, 0.5 + half])
    assert np.allclose(corruption_scores(summary, ["fog", "snow"]), per_image)
    for key in ("imagenet_c_15", "all_19"):
        mean = summary["means"][key]
        assert mean["accuracy"] is None and mean["interval"] is None and "gaussian_noise" in mean["missing"]
        assert "fog" not in mean["missing"]
    assert len(summary["means"]["imagenet_c_15"]["missing"]) == 13
    assert len(summary["means"]["all_19"]["missing"]) == 17
    assert summarize_corruptions(cells, aligned=False)["means"]["evaluated"]["interval"] is None
    json.dumps(summary, allow_nan=False)


def full_result(accuracy: dict, clean: float | None, n: int = 100) -> dict:
    """A summary over the 15 ImageNet-C corruptions with the given accuracy per corruption
    at every severity (n images, the first accuracy * n right)."""
    cells = {name: {s: np.arange(n) < round(accuracy[name] * n) for s in range(1, 6)} for name in CORRUPTIONS}
    result = {"params": "imagenet-c", "clean_accuracy": clean, **summarize_corruptions(cells, aligned=True)}
    return result


def test_mce_and_relative_mce_by_hand():
    accuracy = {name: 0.30 + 0.02 * i for i, name in enumerate(CORRUPTIONS)}
    result = full_result(accuracy, clean=0.80)
    errors = corruption_errors(result, "alexnet")
    assert errors["missing"] == [] and errors["corruptions"] == list(CORRUPTIONS)
    # CE_c = E_c / AlexNet_c; relative CE_c = (E_c - E_clean) / (AlexNet_c - AlexNet_clean)
    ce = [(1 - accuracy[n]) / ALEXNET_ERRORS[n] for n in CORRUPTIONS]
    relative = [(1 - accuracy[n] - 0.20) / (ALEXNET_ERRORS[n] - 0.43478) for n in CORRUPTIONS]
    assert errors["mce"] == pytest.approx(np.mean(ce))
    assert errors["relative_mce"] == pytest.approx(np.mean(relative))
    assert errors["ce"]["fog"] == pytest.approx((1 - accuracy["fog"]) / 0.819324)
    assert result["means"]["imagenet_c_15"]["accuracy"] == pytest.approx(np.mean(list(accuracy.values())))
    assert result["means"]["all_19"]["accuracy"] is None


def test_mce_is_null_and_says_what_is_missing():
    accuracy = {name: 0.5 for name in CORRUPTIONS}
    result = full_result(accuracy, clean=None)
    errors = corruption_errors(result, "alexnet")
    assert errors["mce"] is not None and errors["relative_mce"] is None     # no clean accuracy
    del result["accuracy"]["fog"]["3"]
    del result["accuracy"]["snow"]
    errors = corruption_errors(result, "alexnet")
    assert errors["mce"] is None and errors["missing"] == ["snow", "fog severities 3"]


def test_baseline_mce_by_hand_over_the_severities_both_have():
    ours = full_result({name: 0.6 for name in CORRUPTIONS}, clean=0.9)
    baseline = full_result({name: 0.5 for name in CORRUPTIONS}, clean=0.8)
    errors = corruption_errors(ours, baseline)
    # CE = sum_s 0.4 / sum_s 0.5; relative = sum_s (0.4 - 0.1) / sum_s (0.5 - 0.2)
    assert errors["mce"] == pytest.approx(0.8) and errors["relative_mce"] == pytest.approx(1.0)
    del baseline["accuracy"]["zoom_blur"]
    assert corruption_errors(ours, baseline)["missing"] == ["zoom_blur"]
    with pytest.raises(VitsamError, match="ImageNet-C's"):
        corruption_errors({**ours, "standard_set": "mnist-c"}, "alexnet")


# --------------------------------------------------------------------------- on the fly

class Oracle(nn.Module):
    """Predicts class k for images of mean grey level (k + 0.5) / K."""

    def __init__(self, classes):
        super().__init__()
        self.centres = nn.Parameter((torch.arange(classes) + 0.5) / classes, requires_grad=False)

    def forward(self, x):
        return -1000 * (x.mean((1, 2, 3))[:, None] - self.centres) ** 2


def test_evaluate_corruptions_on_the_fly_is_reproducible_and_complete():
    classes = 4
    labels = torch.arange(8) % classes
    images = ((labels.float() + 0.5) / classes).view(-1, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    model = Oracle(classes)
    first = evaluate_corruptions(model, batches, ["contrast", "gaussian_noise"], [1, 5], seed=3)
    assert first == evaluate_corruptions(model, batches, ["contrast", "gaussian_noise"], [1, 5], seed=3)
    assert first["images_digest"] != evaluate_corruptions(model, batches, ["contrast"], [1], seed=4)["images_digest"]
    assert first["clean_accuracy"] == 1.0 and first["num_images"] == 8 and first["params"] == "cifar"
    assert first["accuracy"]["contrast"] == {"1": 1.0, "5": 1.0}      # contrast keeps a flat image
    assert first["means"]["evaluated"]["label"] == "mean over the 2 corruptions evaluated"
    json.dumps(first, allow_nan=False)
    everything = evaluate_corruptions(model, batches[:1], severities=[1])
    assert list(everything["accuracy"]) == list(ALL_CORRUPTIONS)
    assert everything["means"]["imagenet_c_15"]["missing"] == [] and everything["means"]["all_19"]["missing"] == []
    assert everything["means"]["imagenet_c_15"]["accuracy"] == pytest.approx(
        np.mean([everything["per_corruption"][n] for n in CORRUPTIONS]))
    assert "mce_alexnet" not in everything          # on-the-fly copies are not the released ImageNet-C
    with pytest.raises(VitsamError, match="snow"):
        evaluate_corruptions(model, batches, ["snowy"])


# --------------------------------------------------------------------------- report

def attack_result(correct: np.ndarray, digest="abc", clean=None) -> dict:
    clean = np.ones(len(correct), bool) if clean is None else clean
    estimate = accuracy_interval(int(correct.sum()), len(correct))
    return {"kind": "pgd", "attack": "pgd", "norm": "linf", "steps": 10, "restarts": 1, "loss": "ce",
            "targeted": False, "step_rule": "2.5 * eps / 10 per step", "seed": 0, "num_images": len(correct),
            "images_digest": digest, "clean_accuracy": clean.mean(), "clean_interval": [0.9, 1.0],
            "clean_correct": pack(clean), "clean_n": len(clean), "eps": [4 / 255],
            "accuracy": {"0.0156863": float(correct.mean())}, "interval": {"0.0156863": [estimate.low, estimate.high]},
            "correct": {"0.0156863": pack(correct)}}


def write_run(root, rho, result):
    """A run directory holding one attack result where the evaluator protocol keeps it."""
    (root / "results" / "attack").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": {"name": "vit_tiny"}, "data": {"dataset": "x"},
                                                  "sam": {"rho": rho}}))
    record = {"evaluator": "attack", "key": "k", "weights": "w", "step": 1, **result}
    (root / "results" / "attack" / "k.json").write_text(json.dumps(record))
    return root


def test_report_pairs_images_and_writes_its_caption_from_the_numbers(tmp_path):
    from vitsam.robustness.report import robustness_section

    n = 600
    vanilla = np.arange(n) < 300                       # 50 % robust
    sam = vanilla | (np.arange(n) >= 540)              # 60 %: SAM wins 60 images, loses none
    runs = [("vanilla", write_run(tmp_path / "v", 0.0, attack_result(vanilla))),
            ("sam", write_run(tmp_path / "s", 0.1, attack_result(sam)))]
    html = robustness_section(runs).to_html()
    assert "+10.0 [+" in html and "SAM higher in 1 of 2 comparisons (green), lower in 0 (red)" in html
    assert "60.0 [" in html and "600 test images" in html and "Our finding" in html
    other = [("vanilla", runs[0][1]), ("sam", write_run(tmp_path / "o", 0.1, attack_result(sam, digest="xyz")))]
    html = robustness_section(other).to_html()
    assert "not the same images" in html and "SAM higher in 0 of 0 comparisons" in html


def test_correctness_moves_to_a_sidecar_npz_and_back(tmp_path):
    from vitsam.robustness.correctness import join_arrays, split_arrays

    corruption = summarize_corruptions({"fog": {1: bits("1101"), 3: bits("0011")}}, aligned=True)
    corruption.update(clean_correct=pack(bits("1111")), clean_n=4, num_images=4)
    adversarial = attack_result(bits("10" * 5))
    shifted = {"kind": "real", "num_images": 3, "accuracy": 2 / 3, "correct": pack(bits("110"))}
    for result in (corruption, adversarial, shifted):
        metrics, arrays = split_arrays(result)
        assert "correct" not in metrics and metrics.get("clean_correct") is None
        json.dumps(metrics, allow_nan=False)
        np.savez(tmp_path / "arrays.npz", **arrays)
        with np.load(tmp_path / "arrays.npz", allow_pickle=False) as stored:
            assert join_arrays(metrics, dict(stored)) == result
    assert np.array_equal(split_arrays(corruption)[1]["correct/fog/3"], bits("0011"))


def test_corrupted_vector_concatenates_cells_in_order():
    from vitsam.robustness.correctness import corrupted_vector

    summary = summarize_corruptions({"fog": {3: bits("01"), 1: bits("11")}, "snow": {1: bits("10")}}, aligned=True)
    assert corrupted_vector(summary, ["snow", "fog"]).tolist() == [1, 0, 1, 1, 0, 1]
    assert corrupted_vector(summary, ["snow", "frost"]) is None


@pytest.mark.skipif("storage" not in inspect.signature(corrupt).parameters,
                    reason="the corruptions' storage step is not in this checkout yet")
def test_imagenet_c_storage_makes_on_the_fly_copies_comparable():
    labels = torch.arange(4) % 2
    images = ((labels.float() + 0.5) / 2).view(-1, 1, 1, 1).expand(4, 3, 128, 128).contiguous()
    model = Oracle(2)
    stored = evaluate_corruptions(model, [(images, labels)], ["brightness"], [1], params="imagenet",
                                  storage="imagenet-c")
    plain = evaluate_corruptions(model, [(images, labels)], ["brightness"], [1], params="imagenet")
    assert stored["storage"] == "imagenet-c" and stored["mce_alexnet"]["missing"][0] == "gaussian_noise"
    assert "mce_alexnet" not in plain and stored["images_digest"] != plain["images_digest"]
