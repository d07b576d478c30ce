"""Corrupted and adversarial accuracy: evaluators and the official corrupted layouts.

Every evaluator takes a model and batches ``(images float (B, C, H, W) in [0, 1],
labels int64 (B,))`` and returns a JSON-serialisable dict. Corruption results keep
the accuracy per corruption and severity; the paper's ImageNet-C number is their mean
(``mean_accuracy``). mCE (Hendrycks & Dietterich 2019) divides each corruption's error,
summed over severities, by a reference's: AlexNet's on ImageNet-C (PAPER.md), or a
baseline run's anywhere else.

Official layouts (``corrupted_sets``): ImageNet-C ``<corruption>/<1..5>/<wnid>/*.JPEG``,
CIFAR-10-C / CIFAR-100-C ``<corruption>.npy`` (severities in blocks of 10000) with
``labels.npy``, MNIST-C ``<corruption>/test_images.npy`` and ``test_labels.npy``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from vitsam.data import FolderSource, Loader, TensorSource, seeded_generator
from vitsam.data.sources import IMAGE_EXTENSIONS
from vitsam.errors import VitsamError, unknown_choice
from vitsam.robustness.adversarial import pgd
from vitsam.robustness.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, SEVERITIES, check_names,
                                           check_severity, corrupt, resolve_params)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

# AlexNet top-1 error on ImageNet-C, mean over the 5 severities (PAPER.md)
ALEXNET_ERRORS = {
    "gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
    "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816, "frost": .826572,
    "fog": .819324, "brightness": .564592, "contrast": .853204, "elastic_transform": .646056,
    "pixelate": .717840, "jpeg_compression": .606500,
}
CIFAR_C_BLOCK = 10000    # images per severity in CIFAR-10-C / CIFAR-100-C files
LAYOUTS = ("imagenet-c", "cifar-c", "mnist-c")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def count_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    return int((model(images).argmax(1) == labels).sum())


# --------------------------------------------------------------------------- summaries

def summarize_corruptions(correct: dict, total: dict) -> dict:
    """{name: {severity: count}} counts -> accuracies, per-corruption and per-severity
    means, and the mean over everything (the paper's ImageNet-C column)."""
    accuracy = {name: {str(s): correct[name][s] / total[name][s] for s in sorted(correct[name])}
                for name in correct}
    per_corruption = {name: float(np.mean(list(accs.values()))) for name, accs in accuracy.items()}
    severities = sorted({s for accs in accuracy.values() for s in accs}, key=int)
    per_severity = {s: float(np.mean([accs[s] for accs in accuracy.values() if s in accs])) for s in severities}
    values = [a for accs in accuracy.values() for a in accs.values()]
    result = {"accuracy": accuracy, "per_corruption": per_corruption, "per_severity": per_severity,
              "mean_accuracy": float(np.mean(values)) if values else None}
    if all(name in accuracy for name in CORRUPTIONS):
        # the 15 of ImageNet-C alone, without the 4 extra corruptions
        result["mean_accuracy_15"] = float(np.mean([per_corruption[name] for name in CORRUPTIONS]))
    return result


def corruption_errors(result: dict, reference: dict | str) -> dict:
    """Corruption errors CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c} and their mean, mCE.

    ``reference`` is ``"alexnet"`` (the 15 ImageNet-C corruptions; AlexNet's errors are
    given as severity means, so CE_c = mean_s E_{s,c} / AlexNet_c) or another corruption
    result (a baseline run), compared on the corruptions and severities both have."""
    if reference == "alexnet":
        ce = {name: (1 - result["per_corruption"][name]) / ALEXNET_ERRORS[name]
              for name in CORRUPTIONS if name in result["per_corruption"]}
    else:
        ce = {}
        for name, accs in result["accuracy"].items():
            ref = reference["accuracy"].get(name, {})
            common = [s for s in accs if s in ref]
            ref_error = sum(1 - ref[s] for s in common)
            if common and ref_error > 0:
                ce[name] = sum(1 - accs[s] for s in common) / ref_error
    return {"ce": ce, "mce": float(np.mean(list(ce.values()))) if ce else None}


# --------------------------------------------------------------------------- evaluators

def evaluate_corruptions(model: nn.Module, batches: Batches, names: Iterable[str] | None = None,
                         severities: Iterable[int] = SEVERITIES, params: str = "auto", seed: int = 0,
                         baseline: dict | None = None) -> dict:
    """Accuracy on corrupted copies of ``batches``, made on the fly.

    One pass over the data: each batch is corrupted with every name and severity, with
    a generator seeded by (seed, corruption, severity, batch index), so the corrupted
    set is the same for every model evaluated with the same seed and batch size."""
    names = check_names(ALL_CORRUPTIONS if names is None else list(names))
    severities = [check_severity(s) for s in severities]
    model.eval()
    device = model_device(model)
    correct = {n: dict.fromkeys(severities, 0) for n in names}
    total = {n: dict.fromkeys(severities, 0) for n in names}
    clean = count = 0
    table = None
    for index, (images, labels) in enumerate(batches):
        images, labels = images.to(device), labels.to(device)
        table = table or resolve_params(params, *images.shape[-2:])
        clean += count_correct(model, images, labels)
        count += len(labels)
        for name in names:
            for severity in severities:
                generator = seeded_generator(seed, ALL_CORRUPTIONS.index(name), severity, index)
                corrupted = corrupt(images, name, severity, generator, table)
                correct[name][severity] += count_correct(model, corrupted, labels)
                total[name][severity] += len(labels)
    if count == 0:
        raise VitsamError("evaluate_corruptions: the batches hold no images")
    result = {"kind": "corruptions", "params": table, "seed": seed, "num_images": count,
              "clean_accuracy": clean / count, **summarize_corruptions(correct, total)}
    return with_mce(result, baseline)


def with_mce(result: dict, baseline: dict | None) -> dict:
    if result.get("params") == "imagenet-c":
        result["mce_alexnet"] = corruption_errors(result, "alexnet")
    if baseline is not None:
        result["mce_baseline"] = corruption_errors(result, baseline)
    return result


def evaluate_corrupted_sets(model: nn.Module, sets: Iterable[tuple[str, int, Batches]], layout: str,
                            baseline: dict | None = None) -> dict:
    """Accuracy on stored corrupted sets: ``sets`` yields (name, severity, batches)."""
    model.eval()
    device = model_device(model)
    correct: dict = {}
    total: dict = {}
    for name, severity, batches in sets:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            correct.setdefault(name, {}).setdefault(severity, 0)
            total.setdefault(name, {}).setdefault(severity, 0)
            correct[name][severity] += count_correct(model, images, labels)
            total[name][severity] += len(labels)
    if not correct:
        raise VitsamError(f"no corrupted images found in the {layout} layout")
    result = {"kind": "corruptions", "params": layout,
              "num_images": max(sum(t.values()) // len(t) for t in total.values()),
              **summarize_corruptions(correct, total)}
    return with_mce(result, baseline)


def evaluate_pgd(model: nn.Module, batches: Batches, eps_list: Iterable[float], norm: str = "linf",
                 steps: int = 10, step_size: float | None = None, seed: int = 0) -> dict:
    """Accuracy under PGD (random start) for each radius in ``eps_list`` (pixel units of
    [0, 1] images); eps 0 is the clean accuracy."""
    eps_list = [float(e) for e in eps_list]
    device = model_device(model)
    correct = dict.fromkeys(eps_list, 0)
    clean = count = 0
    for index, (images, labels) in enumerate(batches):
        images, labels = images.to(device), labels.to(device)
        model.eval()
        clean += count_correct(model, images, labels)
        count += len(labels)
        for k, eps in enumerate(eps_list):
            adversarial = pgd(model, images, labels, eps, steps, step_size, norm,
                              generator=seeded_generator(seed, k, index))
            correct[eps] += count_correct(model, adversarial, labels)
    if count == 0:
        raise VitsamError("evaluate_pgd: the batches hold no images")
    return {"kind": "pgd", "norm": norm, "steps": steps, "step_size": step_size, "seed": seed,
            "num_images": count, "clean_accuracy": clean / count, "eps": eps_list,
            "accuracy": {eps_key(e): correct[e] / count for e in eps_list}}


def eps_key(eps: float) -> str:
    return f"{eps:.6g}"


# --------------------------------------------------------------------------- official layouts

def corrupted_sets(layout: str, root: str | Path, img_size: int, names: Iterable[str] | None = None,
                   severities: Iterable[int] = SEVERITIES, batch_size: int = 256,
                   max_images: int | None = None) -> Iterator[tuple[str, int, Batches]]:
    """(name, severity, batches) of a stored corrupted data set. Images are resized to
    ``img_size`` when their size differs (the stored sets are already cropped)."""
    if layout not in LAYOUTS:
        raise unknown_choice("corrupted-set layout", layout, LAYOUTS)
    root = Path(root)
    if not root.is_dir():
        raise VitsamError(f"{layout} directory {str(root)!r} does not exist")
    available = _layout_names(layout, root)
    names = available if names is None else [n for n in check_names(names) if n in available]
    if not names:
        raise VitsamError(f"no corruption of {list(ALL_CORRUPTIONS)} found in {str(root)!r} ({layout} layout)")
    severities = [check_severity(s) for s in severities]
    for name in names:
        for severity in severities:
            source = _layout_source(layout, root, name, severity)
            if source is None:
                continue
            if max_images is not None and len(source) > max_images:
                source = source.select(torch.arange(max_images))
            yield name, severity, Loader(source, min(batch_size, len(source)), train=False, img_size=img_size,
                                         eval_crop_fraction=1.0)


def _layout_names(layout: str, root: Path) -> list[str]:
    if layout == "cifar-c":
        return [n for n in ALL_CORRUPTIONS if (root / f"{n}.npy").is_file()]
    return [n for n in ALL_CORRUPTIONS if (root / n).is_dir()]


def _layout_source(layout: str, root: Path, name: str, severity: int):
    if layout == "imagenet-c":
        folder = root / name / str(severity)
        return class_folders(folder) if folder.is_dir() else None
    if layout == "cifar-c":
        images = _load_npy(root / f"{name}.npy")
        labels = _load_npy(root / "labels.npy")
        block = slice((severity - 1) * CIFAR_C_BLOCK, severity * CIFAR_C_BLOCK)
        if len(images) < severity * CIFAR_C_BLOCK and len(images) % 5 == 0:
            size = len(images) // 5                   # a shortened copy: five equal blocks
            block = slice((severity - 1) * size, severity * size)
        return _tensor_source(images[block], labels[block], f"{root / name}.npy severity {severity}")
    # MNIST-C has one severity per corruption: report it as severity 1
    if severity != 1:
        return None
    folder = root / name
    return _tensor_source(_load_npy(folder / "test_images.npy"), _load_npy(folder / "test_labels.npy"), str(folder))


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise VitsamError(f"missing file {str(path)!r}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise VitsamError(f"{str(path)!r} is not a plain .npy array ({err})") from None


def _tensor_source(images: np.ndarray, labels: np.ndarray, name: str) -> TensorSource:
    """uint8 (N, H, W[, C]) -> TensorSource (N, C, H, W)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise VitsamError(f"{name}: expected uint8 images (N, H, W[, C]), got {images.dtype} {images.shape}")
    labels = torch.from_numpy(labels.astype(np.int64).reshape(-1))
    classes = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []
    return TensorSource(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, classes, name)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def class_folders(folder: Path, classes: list[str] | None = None, label_of=None) -> FolderSource:
    """Images in class sub-folders; labels are positions in ``classes`` (default: the
    sorted folder names, the ImageNet order) or ``label_of(folder name)``."""
    folders = sorted(p for p in folder.iterdir() if p.is_dir())
    classes = classes or [p.name for p in folders]
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for sub in folders:
        label = label_of(sub.name) if label_of else index.get(sub.name)
        if label is None:
            raise unknown_choice(f"class folder in {str(folder)!r}", sub.name, classes)
        found = image_files(sub)
        files += found
        labels += [label] * len(found)
    if not files:
        raise VitsamError(f"no images found under {str(folder)!r}")
    return FolderSource(files, torch.tensor(labels), classes, str(folder))
