"""Deterministic, resumable, shardable batches of preprocessed images.

Every random choice is a pure function of integers:
- the shuffle of epoch ``e`` depends only on (seed, e);
- the crops and flips of batch ``s`` of epoch ``e`` on rank ``r`` only on (seed, e, s, r).
So a run resumed at (epoch, step) sees exactly the batches an uninterrupted run would,
whatever happened before, and the order of worker processes does not matter.

For training, each epoch's permutation is padded by wrapping to a multiple of
``world_size`` and rank ``r`` takes every ``world_size``-th index from ``r`` (like
DistributedSampler), so DDP ranks see disjoint shards of equal length and step in
lockstep. For evaluation nothing is padded: the shards are disjoint and together hold
every image exactly once, so counts summed over ranks are exact.

In-memory sources are indexed and transformed a whole batch at a time (on ``device``);
folder sources decode and crop per image with Pillow, in worker processes when
``num_workers > 0``, reading each file's size from its header first, so that a JPEG whose
crop is large decodes at a reduced scale (``transforms.jpeg_draft``); batches are pinned
for an asynchronous copy when ``device`` is a GPU.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.utils.data

from vitsam.data.sources import FolderSource, ImageSource, TensorSource
from vitsam.data.transforms import (center_crop, eval_box, jpeg_draft, pil_resized_crop, random_resized_crop,
                                    sample_crop_boxes, sample_flips, to_float)
from vitsam.errors import VitsamError

SHUFFLE, AUGMENT = 0, 1  # separate random streams derived from the same seed


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose state depends only on the non-negative integers ``key``.

    SeedSequence hashes the key, so nearby keys (step 7 and step 8) give unrelated streams.
    """
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class Loader:
    """Batches ``(images float32 (B, C, img_size, img_size) in [0, 1], labels int64 (B,))``.

    ``train``: shuffle each epoch, Inception crop + flip, drop the last partial batch.
    Otherwise: data order, eval resize + center crop, keep every sample.
    """

    def __init__(self, source: ImageSource, batch_size: int, train: bool, img_size: int, seed: int = 0,
                 crop_scale: tuple = (0.08, 1.0), crop_ratio: tuple = (3 / 4, 4 / 3), hflip: bool = True,
                 eval_crop_fraction: float = 0.875, drop_last: bool | None = None,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, device: str | torch.device = "cpu"):
        if batch_size <= 0 or seed < 0 or not 0 <= rank < world_size:
            raise VitsamError(f"loader needs batch_size > 0, seed >= 0 and 0 <= rank < world_size; "
                              f"got batch_size={batch_size}, seed={seed}, rank={rank}, world_size={world_size}")
        self.source, self.batch_size, self.train, self.img_size, self.seed = source, batch_size, train, img_size, seed
        self.crop_scale, self.crop_ratio, self.hflip = tuple(crop_scale), tuple(crop_ratio), hflip
        self.eval_crop_fraction = eval_crop_fraction
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.device = num_workers, torch.device(device)
        self.samples_per_rank = (math.ceil(len(source) / world_size) if train
                                 else len(range(rank, len(source), world_size)))
        rounding = math.floor if self.drop_last else math.ceil
        self.steps_per_epoch = rounding(self.samples_per_rank / batch_size)
        if self.steps_per_epoch == 0:
            raise VitsamError(f"batch size {batch_size} is larger than the {self.samples_per_rank} images per rank "
                              f"of {source.name}: lower the batch size")
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(self.epoch)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, int64 (samples_per_rank,)."""
        n = len(self.source)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        order = torch.randperm(n, generator=seeded_generator(self.seed, SHUFFLE, epoch))
        total = self.samples_per_rank * self.world_size
        padded = order.repeat(math.ceil(total / n))[:total]  # wrap around so all ranks get equally many
        return padded[self.rank::self.world_size]

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from ``start_step`` on (a resumed run passes its step)."""
        order = self.epoch_indices(epoch)
        steps = range(start_step, self.steps_per_epoch)
        if isinstance(self.source, TensorSource):
            for step in steps:
                yield self._tensor_batch(order, epoch, step)
            return
        dataset = _FolderBatches(self, order, epoch)
        if self.num_workers > 0:
            batches = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=steps,
                                                  num_workers=self.num_workers,
                                                  pin_memory=self.device.type == "cuda")
        else:
            batches = (dataset[step] for step in steps)
        for batch in batches:
            if isinstance(batch, VitsamError):
                raise batch
            images, labels = batch
            yield to_float(images.to(self.device, non_blocking=True)), labels.to(self.device)

    def batch_indices(self, order: torch.Tensor, step: int) -> torch.Tensor:
        return order[step * self.batch_size:(step + 1) * self.batch_size]

    def augment_generator(self, epoch: int, step: int) -> torch.Generator:
        return seeded_generator(self.seed, AUGMENT, epoch, step, self.rank)

    def _tensor_batch(self, order: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.batch_indices(order, step)
        images = self.source.images[index].to(self.device, non_blocking=True)  # uint8 (B, C, H, W)
        labels = self.source.labels[index].to(self.device)
        if self.train:
            images = random_resized_crop(images, self.img_size, self.augment_generator(epoch, step),
                                         self.crop_scale, self.crop_ratio, self.hflip)
        else:
            images = center_crop(images, self.img_size, self.eval_crop_fraction)
        return images, labels


class _FolderBatches(torch.utils.data.Dataset):
    """Item ``step`` is the whole uint8 batch ``step`` of one epoch (decoded in a worker)."""

    def __init__(self, loader: Loader, order: torch.Tensor, epoch: int):
        self.loader, self.order, self.epoch = loader, order, epoch

    def __len__(self) -> int:
        return self.loader.steps_per_epoch

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | VitsamError:
        try:
            return self._batch(step)
        except VitsamError as err:
            # handed back, not raised: DataLoader would bury the message (the file name)
            # under a worker traceback, and the CLI prints VitsamErrors as one line
            return err

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader, source = self.loader, self.loader.source
        index = loader.batch_indices(self.order, step)
        sizes = torch.tensor([image_size(source, i) for i in index.tolist()])  # (B, 2) height, width
        if loader.train:
            generator = loader.augment_generator(self.epoch, step)
            boxes = sample_crop_boxes(sizes, loader.crop_scale, loader.crop_ratio, generator)
            flips = sample_flips(len(sizes), generator) if loader.hflip else torch.zeros(len(sizes), dtype=torch.bool)
        else:
            boxes = [eval_box(h, w, loader.img_size, loader.eval_crop_fraction) for h, w in sizes.tolist()]
            flips = torch.zeros(len(sizes), dtype=torch.bool)
        crops = [decode_crop(source, i, box, flip, loader.img_size)
                 for i, box, flip in zip(index.tolist(), boxes, flips.tolist())]
        return torch.stack(crops), source.labels[index]  # uint8 (B, C, S, S), int64 (B,)


def image_size(source: FolderSource, index: int) -> tuple[int, int]:
    """(height, width) of image ``index`` from its header alone."""
    with source.open(index) as image:
        return image.height, image.width


def decode_crop(source: FolderSource, index: int, box, flip: bool, size: int) -> torch.Tensor:
    """Image ``index`` decoded (at a reduced scale when the crop allows), ``box`` (top, left,
    h, w) cropped, resized to (size, size), maybe mirrored: uint8 (3, size, size)."""
    with source.open(index) as image:
        box = jpeg_draft(image, box, size)
        return pil_resized_crop(image.convert("RGB"), box, flip, size)
