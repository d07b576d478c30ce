"""Class-balanced training subsets: the paper's data-size study (Table 5: 1/2, 1/4, 1/10
of ImageNet), where the gap SAM opens over vanilla training grows as data shrinks."""
from __future__ import annotations

import math

import torch

from vitsam.data.sources import ImageSource
from vitsam.errors import VitsamError


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted int64 indices keeping ``fraction`` of each class (rounded half up, at least one).

    The choice depends only on (labels, fraction, seed); classes are visited in order
    with one generator, so the subset for a given seed never changes.
    """
    if not 0 < fraction <= 1:
        raise VitsamError(f"subset fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    by_class = torch.split(torch.argsort(labels, stable=True), torch.bincount(labels).tolist())
    chosen = []
    for members in by_class:  # indices of one class, ascending
        keep = max(1, math.floor(fraction * len(members) + 0.5)) if len(members) else 0
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.sort(torch.cat(chosen)).values


def subset_source(source: ImageSource, fraction: float, seed: int) -> ImageSource:
    """``source`` restricted to a class-balanced ``fraction`` (the source itself when fraction is 1)."""
    if fraction == 1:
        return source
    return source.select(class_balanced_subset(source.labels, fraction, seed))


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of all indices in which every prefix is (nearly) class-stratified.

    Each example gets the key (r + u) / n_c: r its rank in a random permutation of its
    class, n_c the class size, u ~ U(0, 1) a tie-break; sorting by the key interleaves
    the classes in proportion to their sizes. So the first n examples are a stratified
    random sample for every n, and asking for more examples keeps the first ones (an
    analysis on 256 images is a prefix of one on 1024). Depends only on (labels, seed).
    """
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels)
    keys = torch.empty(len(labels), dtype=torch.float64)
    for cls in range(len(counts)):
        members = (labels == cls).nonzero().flatten()
        ranks = torch.randperm(len(members), generator=generator).double()
        keys[members] = (ranks + torch.rand(len(members), generator=generator, dtype=torch.float64)) / len(members)
    return torch.argsort(keys)
