"""A run's data sets from its DataConfig: the one place that turns config into sources."""
from __future__ import annotations

from vitsam.config import DataConfig
from vitsam.data import load_source, subset_source


def build_source(data: DataConfig, split: str):
    """The `split` ("train" | "test") source of a run; the class-balanced fraction applies to train only."""
    source = load_source(data.dataset, split, data.data_dir or None)
    if split == "train" and data.train_fraction < 1:
        source = subset_source(source, data.train_fraction, data.subset_seed)
    return source
