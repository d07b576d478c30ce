"""Stored corrupted test sets, read as (corruption, severity, batches).

Layouts: ImageNet-C ``<corruption>/<1..5>/<wnid>/*.JPEG``; CIFAR-10-C / CIFAR-100-C
``<corruption>.npy`` (severities in blocks of 10000) with ``labels.npy``; MNIST-C
``<corruption>/test_images.npy`` and ``test_labels.npy`` (one severity; ``identity`` is
the uncorrupted test set). Every corruption present is read, ImageNet-C's or not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from vitsam.data import FolderSource, Loader, TensorSource
from vitsam.data.sources import IMAGE_EXTENSIONS
from vitsam.errors import VitsamError, unknown_choice
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, SEVERITIES, check_severity

# MNIST-C's 15 corruptions (Mu & Gilmer 2019; google-research/mnist-c corruptions.py);
# its data set also holds `identity`, the uncorrupted test set.
MNIST_C_CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                       "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")
MNIST_C_CLEAN = "identity"
CIFAR_C_BLOCK = 10000    # images per severity in CIFAR-10-C / CIFAR-100-C files
LAYOUTS = ("imagenet-c", "cifar-c", "mnist-c")


class CorruptedSets:
    """(name, severity, batches) of each set present, in order. ``len`` counts the sets
    (the total a progress line needs); a set's images are read when the iteration
    reaches it."""

    def __init__(self, present: list[tuple[str, int]], load: Callable[[str, int], Loader]):
        self.present, self.load = present, load

    def __len__(self) -> int:
        return len(self.present)

    def __iter__(self) -> Iterator[tuple[str, int, Loader]]:
        for name, severity in self.present:
            yield name, severity, self.load(name, severity)


def corrupted_sets(layout: str, root: str | Path, img_size: int, names: Iterable[str] | None = None,
                   severities: Iterable[int] = SEVERITIES, batch_size: int = 256,
                   max_images: int | None = None, classes: list[str] | None = None) -> CorruptedSets:
    """(name, severity, batches) of a stored corrupted data set: every corruption found
    (``names`` picks some; one that is absent is an error). Images are resized to
    ``img_size`` when their size differs (the stored sets are already cropped).

    ``classes``: the model's classes in logit order (the class names of its training
    data). ImageNet-C needs them: its ``<wnid>`` folders are mapped by name, so a missing
    folder shifts nothing. For the array layouts, labels are class indices and must be
    below ``len(classes)``."""
    if layout not in LAYOUTS:
        raise unknown_choice("corrupted-set layout", layout, LAYOUTS)
    root = Path(root)
    if not root.is_dir():
        raise VitsamError(f"{layout} directory {str(root)!r} does not exist")
    if layout == "imagenet-c" and classes is None:
        raise VitsamError("imagenet-c needs the model's classes (its wnids in logit order) to label the "
                          "<wnid> folders")
    available = layout_names(layout, root)
    if not available:
        raise VitsamError(f"no corruption found in {str(root)!r} ({layout} layout)")
    names = available if names is None else _requested(list(names), available, layout, root)
    severities = [check_severity(s) for s in severities]

    def load(name: str, severity: int) -> Loader:
        source = _layout_source(layout, root, name, severity, classes)
        if max_images is not None and len(source) > max_images:
            source = source.select(torch.arange(max_images))
        return Loader(source, min(batch_size, len(source)), train=False, img_size=img_size, eval_crop_fraction=1.0)

    return CorruptedSets([(n, s) for n in names for s in severities if _present(layout, root, n, s)], load)


def layout_names(layout: str, root: Path) -> list[str]:
    """Corruptions present: ImageNet-C's 19 first in their order, then any other, sorted."""
    if layout == "cifar-c":
        found = {p.stem for p in root.glob("*.npy") if p.stem != "labels"}
    else:
        found = {p.name for p in root.iterdir() if p.is_dir()}
    return [n for n in ALL_CORRUPTIONS if n in found] + sorted(found - set(ALL_CORRUPTIONS))


def _requested(names: list[str], available: list[str], layout: str, root: Path) -> list[str]:
    absent = [n for n in names if n not in available]
    if absent:
        raise VitsamError(f"corruptions {', '.join(absent)} not found in {str(root)!r} ({layout} layout); "
                          f"found: {', '.join(available)}")
    return names


def _present(layout: str, root: Path, name: str, severity: int) -> bool:
    """Whether a set exists: an ImageNet-C severity folder may be absent; MNIST-C has one
    severity per corruption, reported as severity 1."""
    if layout == "imagenet-c":
        return (root / name / str(severity)).is_dir()
    return layout == "cifar-c" or severity == 1


def _layout_source(layout: str, root: Path, name: str, severity: int, classes):
    if layout == "imagenet-c":
        return class_folders(root / name / str(severity), classes)
    if layout == "cifar-c":
        images = _load_npy(root / f"{name}.npy")
        labels = _load_npy(root / "labels.npy")
        size = CIFAR_C_BLOCK if len(images) >= 5 * CIFAR_C_BLOCK or len(images) % 5 else len(images) // 5
        block = slice((severity - 1) * size, severity * size)     # a shortened copy: five equal blocks
        return _tensor_source(images[block], labels[block], f"{root / name}.npy severity {severity}", classes)
    folder = root / name
    return _tensor_source(_load_npy(folder / "test_images.npy"), _load_npy(folder / "test_labels.npy"),
                          str(folder), classes)


def _load_npy(path: Path) -> np.ndarray:
    """A plain array, memory-mapped (a 50000-image CIFAR-10-C file is read once per block)."""
    if not path.is_file():
        raise VitsamError(f"missing file {str(path)!r}")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:
        raise VitsamError(f"{str(path)!r} is not a valid array file ({err})") from None


def _tensor_source(images: np.ndarray, labels: np.ndarray, name: str, classes=None) -> TensorSource:
    """uint8 (N, H, W[, C]) -> TensorSource (N, C, H, W)."""
    images = np.array(images)                      # out of the memory map
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise VitsamError(f"{name}: expected uint8 images (N, H, W[, C]), got {images.dtype} {images.shape}")
    labels = torch.from_numpy(np.asarray(labels).astype(np.int64).reshape(-1))
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []
    elif len(labels) and int(labels.max()) >= len(classes):
        raise VitsamError(f"{name}: label {int(labels.max())} is not a class of the model "
                          f"({len(classes)} classes)")
    return TensorSource(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, classes, name)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def class_folders(folder: Path, classes: list[str] | None = None, label_of=None) -> FolderSource:
    """Images in class sub-folders; a folder's label is its position in ``classes``
    (default: the sorted folder names) or ``label_of(folder name)``. A folder that is not
    a class is an error; a class without a folder is simply absent."""
    folders = sorted(p for p in folder.iterdir() if p.is_dir())
    classes = list(classes) if classes is not None else [p.name for p in folders]
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for sub in folders:
        label = label_of(sub.name) if label_of else index.get(sub.name)
        if label is None:
            raise VitsamError(f"class folder {sub.name!r} in {str(folder)!r} is not one of the model's "
                              f"{len(classes)} classes (first: {', '.join(classes[:3])})")
        found = image_files(sub)
        files += found
        labels += [label] * len(found)
    if not files:
        raise VitsamError(f"no images found under {str(folder)!r}")
    return FolderSource(files, torch.tensor(labels), classes, str(folder))
