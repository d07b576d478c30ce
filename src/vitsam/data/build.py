"""A run's data from its DataConfig: the one place that turns config into sources and
evaluation loaders (training, analyses, robustness, the report all come through here).

Splits: ``train`` (the class-balanced ``train_fraction`` of what is left after the
validation hold-out), ``val`` (a class-balanced ``val_fraction`` of the training split,
held out for choosing hyperparameters; never the test set) and ``test``.
"""
from __future__ import annotations

import torch

from vitsam.config import DataConfig
from vitsam.data.loader import Loader
from vitsam.data.sources import ImageSource, load_source
from vitsam.data.subsets import class_balanced_subset, stratified_order, subset_source
from vitsam.errors import VitsamError, unknown_choice

SPLITS = ("train", "val", "test")
VAL_SEED_OFFSET = 7919   # the hold-out draws from its own stream, not the subset's


def build_source(data: DataConfig, split: str) -> ImageSource:
    """The ``split`` source of a run (see the module docstring)."""
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    if split == "test":
        return load_source(data.dataset, "test", data.data_dir or None)
    source = load_source(data.dataset, "train", data.data_dir or None)
    if data.val_fraction > 0:
        held_out = class_balanced_subset(source.labels, data.val_fraction, data.subset_seed + VAL_SEED_OFFSET)
        if split == "val":
            return source.select(held_out)
        keep = torch.ones(len(source), dtype=torch.bool)
        keep[held_out] = False
        source = source.select(keep.nonzero().flatten())
    elif split == "val":
        raise VitsamError("this run holds out no validation images: set data.val_fraction > 0 "
                          "(e.g. 0.1) to evaluate on a validation split")
    return subset_source(source, data.train_fraction, data.subset_seed) if data.train_fraction < 1 else source


def stratified_examples(source: ImageSource, examples: int | None, seed: int = 0) -> ImageSource:
    """``examples`` images of ``source``, class-stratified, in a seeded order whose prefixes
    are stratified too (``stratified_order``); all images (in stored order) when None."""
    if examples is None or examples >= len(source):
        return source
    return source.select(stratified_order(source.labels, seed)[:examples])


def eval_loader(data: DataConfig, split: str, batch_size: int, examples: int | None = None,
                rank: int = 0, world_size: int = 1, device="cpu", seed: int = 0) -> Loader:
    """Un-augmented batches of ``split`` with the run's eval transform (resize + center
    crop), optionally cut to a stratified sample of ``examples`` images; under DDP each
    rank gets a disjoint shard (no image twice, so sums over ranks are exact)."""
    source = stratified_examples(build_source(data, split), examples, seed)
    return Loader(source, min(batch_size, len(source)), train=False, img_size=data.img_size,
                  eval_crop_fraction=data.eval_crop_fraction, rank=rank, world_size=world_size,
                  num_workers=data.num_workers, device=device)
