"""Corrupted and adversarial accuracy: evaluators, summaries with intervals, mCE.

Every evaluator takes a model and batches ``(images float (B, C, H, W) in [0, 1],
labels int64 (B,))`` and returns a strict-JSON dict. Each accuracy comes with its 95%
interval and the per-image correctness behind it (``correctness``: ``accuracy``,
``interval``, ``correct``), so that two runs evaluated on the same images
(``images_digest``) can be compared with a paired interval.

Corruption results keep the accuracy per corruption and severity and name their means
(``means``): ``imagenet_c_15`` over the 15 ImageNet-C corruptions (Hendrycks &
Dietterich 2019; the paper's ImageNet-C column, Table 2), ``all_19`` over those and
the 4 extra ones, ``mnist_c_15`` over MNIST-C's 15 (Mu & Gilmer 2019) for that layout,
and ``evaluated`` over whatever was evaluated (``mean_accuracy``). A mean whose set is
incomplete is null, with the ``missing`` corruptions listed. mCE is computed the same
way (``corruption_errors``): only over the complete standard set, else null.

Stored corrupted sets are read by ``layouts.corrupted_sets`` (re-exported here).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from vitsam.data import seeded_generator
from vitsam.errors import VitsamError, unknown_choice
from vitsam.progress import Progress, track
from vitsam.robustness import layouts
from vitsam.robustness.adversarial import apgd, apgd_checkpoints, check_settings, pgd
from vitsam.robustness.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, check_names,
                                           check_severity, corrupt, resolve_params)
from vitsam.robustness.correctness import Digest, interval, mean_estimate, pack
from vitsam.robustness.layouts import LAYOUTS, MNIST_C_CLEAN, MNIST_C_CORRUPTIONS

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
corrupted_sets = layouts.corrupted_sets      # where the runner imports it from

# AlexNet top-1 error on ImageNet-C, mean over the 5 severities: the table "AlexNet
# ImageNet-C Error" of the hendrycks/robustness README (added in commit 76d9393), the
# normaliser of mCE (Hendrycks & Dietterich 2019, Sec. 4).
ALEXNET_ERRORS = {
    "gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
    "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816, "frost": .826572,
    "fog": .819324, "brightness": .564592, "contrast": .853204, "elastic_transform": .646056,
    "pixelate": .717840, "jpeg_compression": .606500,
}
# AlexNet's clean top-1 error, for relative mCE: 1 - 0.56522, the top-1 accuracy of
# torchvision's AlexNet weights (alexnet-owt-4df8aa71.pth, the ones hendrycks/robustness
# ImageNet-C/test.py evaluates; acc@1 56.522 in torchvision's model documentation).
ALEXNET_CLEAN_ERROR = 0.43478
ATTACKS = ("pgd", "apgd")
# The standard corruption set of each kind of result: mCE and the named means use it
STANDARD_SETS = {"imagenet-c": CORRUPTIONS, "mnist-c": MNIST_C_CORRUPTIONS}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def correct_mask(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool (B,) on the CPU: which images the model classifies right."""
    return (model(images).argmax(1) == labels).cpu()


def accuracy_fields(correct, prefix: str = "") -> dict:
    """{prefix}accuracy, {prefix}interval (Wilson 95%), {prefix}correct (packed), {prefix}n."""
    estimate = mean_estimate(np.asarray(correct, dtype=bool))
    return {f"{prefix}accuracy": estimate.value, f"{prefix}interval": interval(estimate),
            f"{prefix}correct": pack(correct), f"{prefix}n": estimate.n}


# --------------------------------------------------------------------------- summaries

def group_of(name: str, standard_set: str) -> str:
    """Which list a corruption belongs to: 'imagenet-c' (the 15), 'imagenet-c-extra'
    (the 4 extra), 'mnist-c' (MNIST-C's 15) or 'other'."""
    if standard_set == "mnist-c":
        return "mnist-c" if name in MNIST_C_CORRUPTIONS else "other"
    return "imagenet-c" if name in CORRUPTIONS else "imagenet-c-extra" if name in EXTRA_CORRUPTIONS else "other"


def mean_sets(standard_set: str, evaluated: list[str]) -> dict:
    """{key: (label, corruption names)} of the means a corruption result reports."""
    sets = ({"mnist_c_15": ("mean over the 15 MNIST-C corruptions (Mu & Gilmer 2019)", MNIST_C_CORRUPTIONS)}
            if standard_set == "mnist-c" else
            {"imagenet_c_15": ("mean over the 15 ImageNet-C corruptions (the paper's ImageNet-C column, Table 2)",
                               CORRUPTIONS),
             "all_19": ("mean over the 15 ImageNet-C corruptions and the 4 extra ones", ALL_CORRUPTIONS)})
    sets["evaluated"] = (f"mean over the {len(evaluated)} corruptions evaluated", tuple(evaluated))
    return sets


def summarize_corruptions(cells: dict, aligned: bool, standard_set: str = "imagenet-c") -> dict:
    """{name: {severity: bool (n,) correctness}} -> accuracies with intervals per cell,
    per corruption (mean over severities), per severity, and the named means.

    ``aligned``: every cell holds the same images in the same order, so a per-image
    mean over cells exists and the means get intervals."""
    names = list(cells)
    fields = {name: {str(s): accuracy_fields(c) for s, c in sorted(cells[name].items())} for name in names}
    # per image, the fraction of a corruption's severities it survives: (n,)
    scores = {name: np.mean(list(cells[name].values()), axis=0) if aligned else None for name in names}
    per_corruption = {name: float(np.mean([f["accuracy"] for f in fields[name].values()])) for name in names}
    severities = sorted({s for name in names for s in fields[name]}, key=int)
    result = {
        "standard_set": standard_set, "aligned": aligned, "severities": [int(s) for s in severities],
        "groups": {name: group_of(name, standard_set) for name in names},
        "accuracy": {n: {s: f["accuracy"] for s, f in fields[n].items()} for n in names},
        "interval": {n: {s: f["interval"] for s, f in fields[n].items()} for n in names},
        "correct": {n: {s: f["correct"] for s, f in fields[n].items()} for n in names},
        "cell_n": {n: {s: f["n"] for s, f in fields[n].items()} for n in names},
        "per_corruption": per_corruption,
        "per_corruption_interval": {n: interval(mean_estimate(scores[n])) if aligned else None for n in names},
        "per_severity": {s: float(np.mean([fields[n][s]["accuracy"] for n in names if s in fields[n]]))
                         for s in severities},
        "means": named_means(per_corruption, scores, standard_set),
    }
    result["mean_accuracy"] = result["means"]["evaluated"]["accuracy"]
    return result


def named_means(per_corruption: dict, scores: dict, standard_set: str) -> dict:
    """The means of ``mean_sets``: null with the missing corruptions listed when a set is
    incomplete; an interval when per-image ``scores`` exist (aligned cells, else None)."""
    means = {}
    for key, (label, members) in mean_sets(standard_set, list(per_corruption)).items():
        missing = [m for m in members if m not in per_corruption]
        complete = not missing and len(members) > 0
        aligned = complete and all(scores[m] is not None for m in members)
        means[key] = {
            "label": label, "corruptions": list(members), "missing": missing,
            "accuracy": float(np.mean([per_corruption[m] for m in members])) if complete else None,
            "interval": interval(mean_estimate(np.mean([scores[m] for m in members], axis=0))) if aligned else None}
    return means


def _errors(result: dict, name: str) -> dict:
    """{severity: top-1 error} of one corruption."""
    return {s: 1 - a for s, a in result["accuracy"].get(name, {}).items()}


def _clean_error(result) -> float | None:
    clean = result.get("clean_accuracy")
    return None if clean is None else 1 - clean


def corruption_errors(result: dict, reference: dict | str) -> dict:
    """Corruption errors over the result's standard set (``STANDARD_SETS``), Hendrycks &
    Dietterich 2019, Sec. 4:

    - CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}, and mCE their mean;
    - relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean), and
      relative mCE their mean (needs both clean errors).

    ``reference`` is ``"alexnet"`` (ImageNet-C; AlexNet's errors are severity means, so
    every corruption needs all 5 severities) or another corruption result (a baseline
    run, compared on the severities both have). The means are null when a corruption of
    the set is missing (listed in ``missing``) or a denominator is not positive (``undefined``)."""
    standard_set = result.get("standard_set", "imagenet-c")
    names = STANDARD_SETS[standard_set]
    alexnet = reference == "alexnet"
    if alexnet and standard_set != "imagenet-c":
        raise VitsamError(f"AlexNet's corruption errors are ImageNet-C's; this result's set is {standard_set}")
    clean, ref_clean = _clean_error(result), ALEXNET_CLEAN_ERROR if alexnet else _clean_error(reference)
    ce, relative, missing, undefined = {}, {}, [], []
    for name in names:
        errors = _errors(result, name)
        if alexnet:
            absent = [s for s in map(str, SEVERITIES) if s not in errors]
            if absent:
                missing.append(name if not errors else f"{name} severities {', '.join(absent)}")
                continue
            common = list(errors)
            ref = {s: ALEXNET_ERRORS[name] for s in common}
        else:
            ref = _errors(reference, name)
            common = [s for s in errors if s in ref]
            if not common:
                missing.append(name)
                continue
        ratio = _ratio([errors[s] for s in common], [ref[s] for s in common])
        if ratio is None:
            undefined.append(name)
            continue
        ce[name] = ratio
        if clean is not None and ref_clean is not None:
            relative[name] = _ratio([errors[s] - clean for s in common], [ref[s] - ref_clean for s in common])
    complete = not missing and not undefined
    rel_complete = complete and len(relative) == len(names) and None not in relative.values()
    return {"reference": "alexnet" if alexnet else "baseline", "corruptions": list(names),
            "ce": ce, "mce": float(np.mean(list(ce.values()))) if complete else None,
            "relative_ce": relative, "relative_mce": float(np.mean(list(relative.values()))) if rel_complete else None,
            "missing": missing, "undefined": undefined}


def _ratio(numerator: list, denominator: list) -> float | None:
    total = sum(denominator)
    return sum(numerator) / total if total > 0 else None


def comparable_with_imagenet_c(result: dict) -> bool:
    """Whether published ImageNet-C figures (AlexNet's errors among them) apply: the
    stored set, or on-the-fly copies with ImageNet-C's parameters and storage step."""
    return result.get("params") == "imagenet-c" or (result.get("params") == "imagenet"
                                                    and result.get("storage") == "imagenet-c")


def with_mce(result: dict, baseline: dict | None) -> dict:
    """AlexNet-normalised mCE where ImageNet-C's published errors apply; a baseline's anywhere."""
    if comparable_with_imagenet_c(result):
        result["mce_alexnet"] = corruption_errors(result, "alexnet")
    if baseline is not None:
        result["mce_baseline"] = corruption_errors(result, baseline)
    return result


# --------------------------------------------------------------------------- corruption evaluators

class _Cells:
    """Per-image correctness of each (corruption, severity) cell, in image order, and
    the labels each cell saw (to tell whether every cell holds the same images)."""

    def __init__(self):
        self.correct: dict = {}
        self.labels: dict = {}

    def add(self, name: str, severity: int, correct: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct.setdefault(name, {}).setdefault(severity, []).append(correct)
        self.labels.setdefault(name, {}).setdefault(severity, []).append(labels.cpu())

    def arrays(self) -> dict:
        return {n: {s: torch.cat(parts).numpy() for s, parts in by.items()} for n, by in self.correct.items()}

    def aligned(self) -> bool:
        first = None
        for by in self.labels.values():
            for parts in by.values():
                labels = torch.cat(parts)
                if first is None:
                    first = labels
                elif not torch.equal(first, labels):
                    return False
        return first is not None


def evaluate_corruptions(model: nn.Module, batches: Batches, names: Iterable[str] | None = None,
                         severities: Iterable[int] = SEVERITIES, params: str = "auto", seed: int = 0,
                         baseline: dict | None = None, storage: str = "none") -> dict:
    """Accuracy on corrupted copies of ``batches``, made on the fly.

    One pass over the data: each batch is corrupted with every name and severity, with
    a generator seeded by (seed, corruption, severity, batch index), so the corrupted
    set is the same for every model evaluated with the same seed and batches (the
    ``images_digest`` says so). ``storage`` ("none", "imagenet-c", "cifar-c") adds the
    storage step of the released sets (``corrupt``); only ImageNet-C parameters with
    ImageNet-C storage are comparable with published ImageNet-C accuracies (and get
    AlexNet-normalised mCE)."""
    names = check_names(ALL_CORRUPTIONS if names is None else list(names))
    severities = [check_severity(s) for s in severities]
    model.eval()
    device = model_device(model)
    cells, clean, table, digest = _Cells(), [], None, None
    # TODO(after the corruptions' storage step is committed): pass storage=storage always
    stored = {} if storage == "none" else {"storage": storage}
    total = len(batches) * len(names) * len(severities) if hasattr(batches, "__len__") else None
    with Progress(total, f"corruptions ({len(names)} x {len(severities)} sets)", "corrupted batches") as bar:
        for index, (images, labels) in enumerate(batches):
            images, labels = images.to(device), labels.to(device)
            table = table or resolve_params(params, *images.shape[-2:])
            digest = digest or Digest("corruptions", seed, table, storage)
            digest.update(labels)
            clean.append(correct_mask(model, images, labels))
            for name in names:
                for severity in severities:
                    generator = seeded_generator(seed, ALL_CORRUPTIONS.index(name), severity, index)
                    corrupted = corrupt(images, name, severity, generator, table, **stored)
                    cells.add(name, severity, correct_mask(model, corrupted, labels), labels)
                    bar.advance()
    if not clean:
        raise VitsamError("evaluate_corruptions: the batches hold no images")
    clean = torch.cat(clean)
    result = {"kind": "corruptions", "params": table, "storage": storage, "seed": seed, "num_images": len(clean),
              "images_digest": digest.hexdigest(), **accuracy_fields(clean, "clean_"),
              **summarize_corruptions(cells.arrays(), aligned=True)}
    return with_mce(result, baseline)


def evaluate_corrupted_sets(model: nn.Module, sets: Iterable[tuple[str, int, Batches]], layout: str,
                            baseline: dict | None = None, clean: Batches | None = None) -> dict:
    """Accuracy on stored corrupted sets: ``sets`` yields (name, severity, batches) as
    ``corrupted_sets`` does. ``clean`` (the uncorrupted test batches) adds the clean
    accuracy that relative mCE needs; MNIST-C's ``identity`` set serves as clean."""
    if layout not in LAYOUTS:
        raise unknown_choice("corrupted-set layout", layout, LAYOUTS)
    model.eval()
    device = model_device(model)
    cells, digest, clean_correct = _Cells(), Digest(layout), []
    for name, severity, batches in track(sets, label=f"corrupted sets ({layout})", unit="sets"):
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            correct = correct_mask(model, images, labels)
            if layout == "mnist-c" and name == MNIST_C_CLEAN:
                clean_correct.append(correct)
                continue
            digest.update(labels)
            cells.add(name, severity, correct, labels)
    if not cells.correct:
        raise VitsamError(f"no corrupted images found in the {layout} layout")
    for images, labels in clean or ():
        clean_correct.append(correct_mask(model, images.to(device), labels.to(device)))
    arrays = cells.arrays()
    result = {"kind": "corruptions", "params": layout,
              "num_images": max(len(c) for by in arrays.values() for c in by.values()),
              "images_digest": digest.hexdigest(),
              **(accuracy_fields(torch.cat(clean_correct), "clean_") if clean_correct else
                 {"clean_accuracy": None, "clean_interval": None, "clean_correct": None, "clean_n": None}),
              **summarize_corruptions(arrays, cells.aligned(), "mnist-c" if layout == "mnist-c" else "imagenet-c")}
    return with_mce(result, baseline)


# --------------------------------------------------------------------------- adversarial evaluators

def target_classes(logits: torch.Tensor, labels: torch.Tensor, rank: int) -> torch.Tensor:
    """The class with the ``rank``-th highest logit other than the label, (B,): rank 1 is
    the runner-up. Targeted restarts take ranks 1, 2, ... as APGD-T (Croce & Hein 2020)
    takes its top-9 target classes."""
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.argsort(dim=1, descending=True)[:, rank - 1]


def _check_attack(attack, norm, loss, steps, restarts) -> None:
    if attack not in ATTACKS:
        raise unknown_choice("attack", attack, ATTACKS)
    check_settings(0.0, steps, norm, loss)
    if restarts < 1:
        raise VitsamError(f"attacks need restarts >= 1, got {restarts}")


def evaluate_attack(model: nn.Module, batches: Batches, eps_list: Iterable[float], attack: str = "pgd",
                    norm: str = "linf", steps: int = 10, restarts: int = 1, loss: str = "ce",
                    targeted: bool = False, step_size: float | None = None, seed: int = 0) -> dict:
    """Robust accuracy under ``attack`` ("pgd" or "apgd") at each radius of ``eps_list``
    ([0, 1] pixel units; eps 0 is the clean accuracy).

    An image counts as robust only if it is classified right clean and after every one
    of ``restarts`` attacks (each from its own random start; later restarts attack only
    the images still standing, so restarts never raise robust accuracy). ``targeted``:
    restart r aims at the class with the r-th highest clean logit other than the label.
    Random starts are seeded by (seed, eps index, batch index, restart)."""
    _check_attack(attack, norm, loss, steps, restarts)
    eps_list = [float(e) for e in eps_list]
    device = model_device(model)
    digest, clean, robust = Digest(attack), [], {eps: [] for eps in eps_list}
    # one unit: a batch attacked once (one restart) at one radius
    attacks_per_batch = sum(eps > 0 for eps in eps_list) * restarts
    total = len(batches) * attacks_per_batch if hasattr(batches, "__len__") else None
    with Progress(total, f"{attack}-{steps} attacks ({norm})", "batches") as bar:
        for index, (images, labels) in enumerate(batches):
            images, labels = images.to(device), labels.to(device)
            digest.update(labels)
            model.eval()
            with torch.no_grad():
                logits = model(images)
            if targeted and restarts >= logits.shape[1]:
                raise VitsamError(f"targeted attacks with {restarts} restarts need more than {restarts} classes "
                                  f"(one target class per restart); the model has {logits.shape[1]}")
            right = (logits.argmax(1) == labels).cpu()
            clean.append(right)
            for k, eps in enumerate(eps_list):
                standing = right.clone()
                for restart in range(restarts if eps > 0 else 0):
                    todo = standing.nonzero().squeeze(1)
                    if len(todo) == 0:
                        bar.advance(restarts - restart)  # nothing left to attack: the other restarts are done
                        break
                    targets = target_classes(logits[todo], labels[todo], restart + 1) if targeted else None
                    generator = seeded_generator(seed, k, index, restart)
                    adversarial = _attack(attack, model, images[todo], labels[todo], eps, norm, steps, step_size,
                                          loss, targets, generator)
                    standing[todo] = correct_mask(model, adversarial, labels[todo])
                    bar.advance()
                robust[eps].append(standing)
    if not clean:
        raise VitsamError(f"evaluate_{attack}: the batches hold no images")
    clean = torch.cat(clean)
    per_eps = {eps_key(eps): accuracy_fields(torch.cat(robust[eps])) for eps in eps_list}
    return {"kind": attack, "attack": attack, "norm": norm, "steps": steps, "restarts": restarts, "loss": loss,
            "targeted": targeted, "step_rule": _step_rule(attack, steps, step_size),
            "checkpoints": apgd_checkpoints(steps) if attack == "apgd" else None,
            "seed": seed, "num_images": len(clean), "images_digest": digest.hexdigest(),
            **accuracy_fields(clean, "clean_"), "eps": eps_list,
            "accuracy": {e: f["accuracy"] for e, f in per_eps.items()},
            "interval": {e: f["interval"] for e, f in per_eps.items()},
            "correct": {e: f["correct"] for e, f in per_eps.items()}}


def _attack(attack, model, images, labels, eps, norm, steps, step_size, loss, targets, generator):
    if attack == "apgd":
        return apgd(model, images, labels, eps, steps, norm, loss, targets, generator)
    return pgd(model, images, labels, eps, steps, step_size, norm, generator=generator, loss=loss, targets=targets)


def _step_rule(attack: str, steps: int, step_size: float | None) -> str:
    if attack == "apgd":
        return "2 * eps, halved at the checkpoints when progress stalls (Croce & Hein 2020)"
    return f"{step_size:.6g} per step" if step_size is not None else f"2.5 * eps / {steps} per step"


def evaluate_pgd(model: nn.Module, batches: Batches, eps_list: Iterable[float], norm: str = "linf",
                 steps: int = 10, step_size: float | None = None, seed: int = 0, *, restarts: int = 1,
                 loss: str = "ce", targeted: bool = False) -> dict:
    """Accuracy under PGD with a random start (``evaluate_attack`` with attack "pgd")."""
    return evaluate_attack(model, batches, eps_list, "pgd", norm, steps, restarts, loss, targeted, step_size, seed)


def evaluate_apgd(model: nn.Module, batches: Batches, eps_list: Iterable[float], norm: str = "linf",
                  steps: int = 100, seed: int = 0, *, restarts: int = 1, loss: str = "ce",
                  targeted: bool = False) -> dict:
    """Accuracy under APGD (``evaluate_attack`` with attack "apgd"); ``loss="dlr",
    targeted=True`` is AutoAttack's APGD-T."""
    return evaluate_attack(model, batches, eps_list, "apgd", norm, steps, restarts, loss, targeted, None, seed)


def eps_key(eps: float) -> str:
    return f"{eps:.6g}"
