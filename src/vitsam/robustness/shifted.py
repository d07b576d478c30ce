"""Shifted ImageNet test sets: ImageNet-R, ImageNet-A, ImageNet-V2 and ImageNet ReaL.

Layouts (PAPER.md, "Robustness evaluation"):

- ImageNet-R / ImageNet-A: ``<wnid>/*`` for 200 of the 1000 classes. The model is
  scored on the logits of those 200 classes only. Which logits they are comes from
  the model's class order, given as its list of 1000 wnids (for a run trained on an
  ImageNet folder, the sorted class-folder names of its training data).
- ImageNet-V2: ``<class index>/*`` with folders ``0`` .. ``999``, sorted as integers.
- ImageNet ReaL: the validation images (flat or in class folders; ordered by file
  name, ILSVRC2012_val_00000001 first) and ``real.json``, one list of correct labels
  per image in that order; images with an empty list are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vitsam.data import FolderSource, Loader
from vitsam.data.sources import IMAGE_EXTENSIONS
from vitsam.errors import VitsamError, unknown_choice
from vitsam.robustness.evaluate import class_folders, model_device

SHIFTS = ("imagenet-r", "imagenet-a", "imagenet-v2", "real")


def parse_shift(text: str) -> tuple[str, Path]:
    """'imagenet-r:/data/imagenet-r' -> ('imagenet-r', Path('/data/imagenet-r'))."""
    kind, sep, path = text.partition(":")
    if kind not in SHIFTS:
        raise unknown_choice("shifted test set", kind, SHIFTS)
    if not sep or not path:
        raise VitsamError(f"shifted test set {text!r} needs a path: write {kind}:/path/to/{kind}")
    return kind, Path(path)


def subset_indices(subset_wnids, class_wnids) -> list[int]:
    """Positions of ``subset_wnids`` (e.g. ImageNet-R's 200) among the model's classes."""
    position = {w: i for i, w in enumerate(class_wnids)}
    missing = [w for w in subset_wnids if w not in position]
    if missing:
        raise VitsamError(f"{len(missing)} class folders are not among the model's {len(position)} classes "
                          f"(first: {missing[:3]}); pass the model's wnid list in class order")
    return [position[w] for w in subset_wnids]


def _loader(source: FolderSource, img_size: int, batch_size: int, crop_fraction: float,
            max_images: int | None) -> Loader:
    if max_images is not None and len(source) > max_images:
        # an even stride keeps every class represented in a shortened run
        source = source.select(torch.linspace(0, len(source) - 1, max_images).round().long())
    return Loader(source, min(batch_size, len(source)), train=False, img_size=img_size,
                  eval_crop_fraction=crop_fraction)


def _real_source(root: Path) -> tuple[FolderSource, list[list[int]]]:
    labels_file = root / "real.json"
    if not labels_file.is_file():
        raise VitsamError(f"ImageNet ReaL needs {str(labels_file)!r} (the real.json label lists)")
    try:
        real = json.loads(labels_file.read_text())
    except json.JSONDecodeError as err:
        raise VitsamError(f"{str(labels_file)!r} is not valid JSON: {err}") from None
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name)
    if len(files) != len(real):
        raise VitsamError(f"{str(root)!r} holds {len(files)} images but real.json has {len(real)} label lists")
    keep = [i for i, labels in enumerate(real) if labels]
    source = FolderSource([files[i] for i in keep], torch.tensor(keep), [str(i) for i in range(len(real))], str(root))
    return source, real


@torch.no_grad()
def evaluate_shift(model: nn.Module, kind: str, root: str | Path, img_size: int, class_wnids=None,
                   batch_size: int = 128, crop_fraction: float = 0.875, max_images: int | None = None) -> dict:
    """Top-1 accuracy on a shifted test set (``kind`` in SHIFTS) at ``root``, with the
    eval transform of the run (resize to img_size / crop_fraction, centre crop)."""
    if kind not in SHIFTS:
        raise unknown_choice("shifted test set", kind, SHIFTS)
    root = Path(root)
    if not root.is_dir():
        raise VitsamError(f"{kind} directory {str(root)!r} does not exist")
    model.eval()
    device = model_device(model)
    logit_index = real = None
    if kind in ("imagenet-r", "imagenet-a"):
        source = class_folders(root)
        if class_wnids is None:
            raise VitsamError(f"{kind} needs the model's class wnids (its 1000 ImageNet classes in order)")
        logit_index = torch.tensor(subset_indices(source.classes, class_wnids), device=device)
    elif kind == "imagenet-v2":
        folders = sorted((p.name for p in root.iterdir() if p.is_dir()), key=_as_int)
        source = class_folders(root, classes=folders, label_of=_as_int)
    else:
        source, real = _real_source(root)
    correct = total = 0
    for images, labels in _loader(source, img_size, batch_size, crop_fraction, max_images):
        logits = model(images.to(device))
        if logit_index is not None:
            logits = logits[:, logit_index]          # score on the subset's classes only
        predictions = logits.argmax(1).cpu()
        if real is not None:                         # labels hold image indices into real.json
            correct += sum(int(p) in real[i] for p, i in zip(predictions.tolist(), labels.tolist()))
        else:
            correct += int((predictions == labels).sum())
        total += len(labels)
    return {"kind": kind, "path": str(root), "num_images": total, "accuracy": correct / total}


def _as_int(name: str) -> int:
    try:
        return int(name)
    except ValueError:
        raise VitsamError(f"ImageNet-V2 class folders are named 0..999, found {name!r}") from None
