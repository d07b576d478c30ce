"""Shifted ImageNet test sets: ImageNet-R, ImageNet-A, ImageNet-V2 and ImageNet ReaL.

Every set is scored in the model's own class order, given as its list of classes in
logit order (for a run trained on an ImageNet folder, the sorted class-folder names of
its training data, i.e. the 1000 wnids in the standard order):

- ImageNet-R / ImageNet-A (Hendrycks et al. 2021): ``<wnid>/*`` for exactly 200 of the
  1000 classes; the model is scored on the logits of those 200 classes only.
- ImageNet-V2 (Recht et al. 2019): ``<class index>/*`` with folders ``0`` .. ``999``,
  the index in the standard order (the sorted wnids), sorted as integers.
- ImageNet ReaL (Beyer et al. 2020): the validation images (flat or in class folders;
  ordered by file name, ILSVRC2012_val_00000001 first) and ``real.json``, one list of
  correct standard-order labels per image; images with an empty list are skipped.

V2 and ReaL need the model's classes to be the 1000 ImageNet wnids (any order).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from vitsam.data import FolderSource, Loader
from vitsam.data.sources import IMAGE_EXTENSIONS
from vitsam.errors import VitsamError, unknown_choice
from vitsam.progress import track
from vitsam.robustness.correctness import Digest
from vitsam.robustness.evaluate import accuracy_fields, model_device
from vitsam.robustness.layouts import class_folders

SHIFTS = ("imagenet-r", "imagenet-a", "imagenet-v2", "real")
SUBSET_CLASSES = 200           # ImageNet-R and ImageNet-A each cover 200 of the 1000 classes
IMAGENET_CLASSES = 1000
WNID = re.compile(r"n\d{8}")


def parse_shift(text: str) -> tuple[str, Path]:
    """'imagenet-r:/data/imagenet-r' -> ('imagenet-r', Path('/data/imagenet-r'))."""
    kind, sep, path = text.partition(":")
    if kind not in SHIFTS:
        raise unknown_choice("shifted test set", kind, SHIFTS)
    if not sep or not path:
        raise VitsamError(f"shifted test set {text!r} needs a path: write {kind}:/path/to/{kind}")
    return kind, Path(path)


def subset_indices(subset_wnids, class_wnids, kind: str = "the subset") -> list[int]:
    """Positions of ``subset_wnids`` (ImageNet-R's or -A's 200) among the model's classes."""
    if len(subset_wnids) != SUBSET_CLASSES:
        raise VitsamError(f"{kind} should hold {SUBSET_CLASSES} class folders, found {len(subset_wnids)}")
    position = {w: i for i, w in enumerate(class_wnids)}
    missing = [w for w in subset_wnids if w not in position]
    if missing:
        raise VitsamError(f"{len(missing)} class folders of {kind} are not among the model's {len(position)} "
                          f"classes: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    return [position[w] for w in subset_wnids]


def standard_to_model(class_wnids) -> list[int]:
    """For each standard ImageNet class index (sorted wnids), the model's logit index.
    Checks the model's classes are 1000 distinct wnids."""
    classes = list(class_wnids)
    bad = [c for c in classes if not WNID.fullmatch(str(c))]
    if len(classes) != IMAGENET_CLASSES or len(set(classes)) != len(classes) or bad:
        detail = f"e.g. {bad[0]!r} is not a wnid" if bad else f"{len(set(classes))} distinct names"
        raise VitsamError(f"ImageNet-V2 and ReaL labels are standard ImageNet class indices: the model's classes "
                          f"must be the {IMAGENET_CLASSES} ImageNet wnids (n########), got {len(classes)} ({detail})")
    position = {w: i for i, w in enumerate(classes)}
    return [position[w] for w in sorted(classes)]


def _loader(source: FolderSource, img_size: int, batch_size: int, crop_fraction: float,
            max_images: int | None) -> Loader:
    if max_images is not None and len(source) > max_images:
        # an even stride keeps every class represented in a shortened run
        source = source.select(torch.linspace(0, len(source) - 1, max_images).round().long())
    return Loader(source, min(batch_size, len(source)), train=False, img_size=img_size,
                  eval_crop_fraction=crop_fraction)


def _real_source(root: Path, to_model: list[int]) -> tuple[FolderSource, list[set[int]]]:
    """The ReaL images (labels: their index into real.json) and each image's correct
    labels as model logit indices."""
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
    try:
        real = [{to_model[int(k)] for k in labels} for labels in real]
    except (IndexError, ValueError, TypeError):
        raise VitsamError(f"{str(labels_file)!r}: labels must be class indices 0..{IMAGENET_CLASSES - 1}") from None
    keep = [i for i, labels in enumerate(real) if labels]
    source = FolderSource([files[i] for i in keep], torch.tensor(keep), [str(i) for i in range(len(real))], str(root))
    return source, real


def _v2_source(root: Path, to_model: list[int]) -> FolderSource:
    folders = sorted((p.name for p in root.iterdir() if p.is_dir()), key=_as_int)
    return class_folders(root, classes=folders, label_of=lambda name: to_model[_as_int(name)])


@torch.no_grad()
def evaluate_shift(model: nn.Module, kind: str, root: str | Path, img_size: int, class_wnids=None,
                   batch_size: int = 128, crop_fraction: float = 0.875, max_images: int | None = None) -> dict:
    """Top-1 accuracy (with its 95% interval and per-image correctness) on a shifted
    test set (``kind`` in SHIFTS) at ``root``, with the eval transform of the run
    (resize to img_size / crop_fraction, centre crop). ``class_wnids``: the model's
    classes in logit order (required)."""
    if kind not in SHIFTS:
        raise unknown_choice("shifted test set", kind, SHIFTS)
    root = Path(root)
    if not root.is_dir():
        raise VitsamError(f"{kind} directory {str(root)!r} does not exist")
    if class_wnids is None:
        raise VitsamError(f"{kind} needs the model's classes (its ImageNet wnids in logit order)")
    model.eval()
    device = model_device(model)
    logit_index = real = None
    if kind in ("imagenet-r", "imagenet-a"):
        source = class_folders(root)
        logit_index = torch.tensor(subset_indices(source.classes, class_wnids, kind), device=device)
    elif kind == "imagenet-v2":
        source = _v2_source(root, standard_to_model(class_wnids))
    else:
        source, real = _real_source(root, standard_to_model(class_wnids))
    correct, digest = [], Digest(kind)
    for images, labels in track(_loader(source, img_size, batch_size, crop_fraction, max_images),
                                label=kind, unit="batches"):
        digest.update(labels)
        logits = model(images.to(device))
        if logit_index is not None:
            logits = logits[:, logit_index]          # scored on the subset's classes only, in its order
        predictions = logits.argmax(1).cpu()
        if real is not None:                         # labels hold image indices into real.json
            correct.append(torch.tensor([int(p) in real[i] for p, i in zip(predictions.tolist(), labels.tolist())]))
        else:
            correct.append(predictions == labels)
    correct = torch.cat(correct)
    return {"kind": kind, "path": str(root), "num_images": len(correct), "images_digest": digest.hexdigest(),
            **accuracy_fields(correct)}


def _as_int(name: str) -> int:
    if not name.isdigit() or int(name) >= IMAGENET_CLASSES:
        raise VitsamError(f"ImageNet-V2 class folders are named 0..{IMAGENET_CLASSES - 1}, found {name!r}")
    return int(name)
