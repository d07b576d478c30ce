"""Data: image sources, Inception-style transforms, class-balanced subsets, deterministic loaders."""
from vitsam.data.loader import Loader, seeded_generator
from vitsam.data.sources import SOURCE_KINDS, FolderSource, ImageSource, TensorSource, load_source
from vitsam.data.subsets import class_balanced_subset, subset_source
from vitsam.data.transforms import center_crop, random_resized_crop, resized_crop, sample_crop_boxes

__all__ = [
    "Loader", "seeded_generator",
    "SOURCE_KINDS", "FolderSource", "ImageSource", "TensorSource", "load_source",
    "class_balanced_subset", "subset_source",
    "center_crop", "random_resized_crop", "resized_crop", "sample_crop_boxes",
]
