"""Image sources: where the pixels come from, before any transform.

``load_source(spec, split)`` turns a data set spec into an ``ImageSource``:

- ``fashion_mnist[:dir]``   IDX files (gzip or not), default /usr/share/datasets/fashion-mnist
- ``cifar10:dir``, ``cifar100:dir``   the python batches of the official tarballs
- ``folder:dir``            an ImageFolder tree ``dir/<split>/<class>/*.png|jpg|...``
- ``arrays:path``           a .npz, or a dir of ``{split}_images.npy`` / ``{split}_labels.npy``

Two kinds of source come out. A ``TensorSource`` holds every image in memory as
one uint8 tensor (N, C, H, W), so a loader can index and transform whole batches
at once. A ``FolderSource`` holds file paths and decodes one image at a time with
Pillow (images of varying sizes, too many to hold in memory). Both expose
``classes``, ``num_classes``, ``in_chans``, ``labels`` (int64 (N,)) and ``len``.
Nothing is downloaded here: missing data is an error that says how to get it.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError, unknown_choice

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = {"train": "train", "test": "test", "val": "test"}


class ImageSource:
    """What every source offers a loader: labels and class names, without decoding images."""

    classes: list[str]
    labels: torch.Tensor  # int64 (N,)
    in_chans: int
    name: str             # where the data came from, for messages

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: torch.Tensor) -> "ImageSource":
        """The same source restricted to ``indices`` (e.g. a class-balanced subset)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self)} images, {self.num_classes} classes)"


class TensorSource(ImageSource):
    """All images in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise VitsamError(f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise VitsamError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.name = images, labels.long(), list(classes), name
        self.in_chans = images.shape[1]
        _check_labels(self.labels, len(self.classes), name)

    def select(self, indices: torch.Tensor) -> "TensorSource":
        return TensorSource(self.images[indices], self.labels[indices], self.classes, self.name)


class FolderSource(ImageSource):
    """Image files decoded lazily with Pillow, always as RGB (in_chans 3)."""

    in_chans = 3

    def __init__(self, files: list[Path], labels: torch.Tensor, classes: list[str], name: str):
        self.files, self.labels, self.classes, self.name = list(files), labels.long(), list(classes), name

    def select(self, indices: torch.Tensor) -> "FolderSource":
        return FolderSource([self.files[i] for i in indices.tolist()], self.labels[indices], self.classes, self.name)

    @contextlib.contextmanager
    def open(self, index: int) -> Iterator[Image.Image]:
        """Image ``index`` opened lazily (its header read, nothing decoded yet, so a loader
        can ask for a reduced-size JPEG decode); a file Pillow cannot read, now or while
        decoding inside the block, is named in the error."""
        path = self.files[index]
        try:
            with Image.open(path) as image:
                yield image
        except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
            raise VitsamError(f"cannot decode image file {str(path)!r}: {err}") from None


def _check_labels(labels: torch.Tensor, num_classes: int, name: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise VitsamError(f"{name}: labels must lie in [0, {num_classes}), "
                          f"found [{int(labels.min())}, {int(labels.max())}]")


# --------------------------------------------------------------------------- entry point

def load_source(spec: str, split: str, data_dir: str | None = None) -> ImageSource:
    """``spec`` is ``kind`` or ``kind:path`` (see the module docstring); ``split`` is train | test | val.

    The path in the spec wins over ``data_dir`` (data.data_dir / --data-dir), which
    overrides a named data set's default location.
    """
    kind, _, path = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise unknown_choice("data set kind", kind, SOURCE_KINDS)
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    path = path or data_dir or ""
    if not path and kind != "fashion_mnist":
        raise VitsamError(f"data set {spec!r} needs a path: write {kind}:/path/to/data (or set data.data_dir)")
    return SOURCE_KINDS[kind](path, SPLITS[split])


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)

def fashion_mnist(path: str, split: str) -> TensorSource:
    root = Path(path or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    # (N, 28, 28) -> (N, 1, 28, 28)
    return TensorSource(images.unsqueeze(1), labels.long(), FASHION_MNIST_CLASSES, f"fashion_mnist:{root} ({split})")


def _idx_file(root: Path, stem: str) -> torch.Tensor:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return _read_idx(str(candidate))
    raise VitsamError(
        f"Fashion-MNIST file {stem}[.gz] not found in {str(root)!r}: install the Debian package "
        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point data.data_dir / "
        f"--data-dir at a folder with the IDX files")


@functools.lru_cache(maxsize=8)
def _read_idx(path: str) -> torch.Tensor:
    """Decode one IDX file (uint8 payload); cached because Fashion-MNIST is read on every run and eval.

    The cached tensor is shared: sources only ever index it (a copy), never write to it.
    """
    raw = Path(path).read_bytes()
    data = gzip.decompress(raw) if path.endswith(".gz") else raw
    # header: 2 zero bytes, dtype code (0x08 = uint8), ndim, then ndim big-endian int32 sizes
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise VitsamError(f"{path!r} is not a uint8 IDX file")
    ndim = data[3]
    shape = tuple(np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise VitsamError(f"{path!r} is truncated: header says {shape}, payload has {len(data) - offset} bytes")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy())


# --------------------------------------------------------------------------- CIFAR (python pickles)

class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches that can build nothing but plain data.

    The batches are pickled dicts of bytes, lists, ints and one numpy uint8 array.
    The standard unpickler would import and call any global a file names (code
    execution from a downloaded file), so ``find_class`` refuses every global except
    the few that rebuild plain data: numpy's ``_reconstruct``/``_frombuffer`` make an
    array from bytes, ``ndarray``/``dtype`` are its type and element type, and
    ``_codecs.encode`` is how Python 3 spells bytes in protocol-2 pickles. Nothing
    else can be imported or called.
    """

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            # encoding='bytes': the official batches were pickled by Python 2 (str -> bytes keys)
            data = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise VitsamError(f"{str(path)!r} is not a CIFAR python batch: {err}") from None
    if not isinstance(data, dict):
        raise VitsamError(f"{str(path)!r} is not a CIFAR python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


CIFAR = {  # kind -> (folder in the tarball, train files, test files, label key, class-name key, tarball)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", ("batches.meta", "label_names"), "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"],
                 "fine_labels", ("meta", "fine_label_names"), "cifar-100-python.tar.gz"),
}


def cifar(kind: str, path: str, split: str) -> TensorSource:
    folder, train_files, test_files, label_key, (meta_file, names_key), tarball = CIFAR[kind]
    root = Path(path)
    if not (root / train_files[0]).is_file() and (root / folder).is_dir():
        root = root / folder  # the parent of the extracted folder was given
    files = train_files if split == "train" else test_files
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise VitsamError(
            f"{kind}: {', '.join(missing)} not found in {str(root)!r}. Download the python version "
            f"{tarball} from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with internet, "
            f"extract it (tar xzf {tarball}) and pass {kind}:/path/to/{folder} (or its parent); "
            f"it holds {', '.join(train_files + test_files + [meta_file])}")
    batches = [_unpickle(root / f) for f in files]
    try:
        # each row of 'data' is 3072 bytes: the R, G and B planes of a 32x32 image
        images = np.concatenate([_uint8_array(b["data"]).reshape(-1, 3, 32, 32) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except (KeyError, ValueError) as err:
        raise VitsamError(f"{kind} batches in {str(root)!r} lack the expected 'data' / {label_key!r} "
                          f"arrays: {err}") from None
    classes = _cifar_classes(root / meta_file, names_key, kind)
    return TensorSource(torch.from_numpy(images), torch.from_numpy(labels), classes, f"{kind}:{root} ({split})")


def _uint8_array(data) -> np.ndarray:
    """The official batches hold a numpy array; plain-data batches may hold bytes or lists."""
    return np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8)


def _cifar_classes(meta: Path, key: str, kind: str) -> list[str]:
    if meta.is_file():
        names = _unpickle(meta).get(key)
        if names:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return CIFAR10_CLASSES if kind == "cifar10" else [str(i) for i in range(100)]


# --------------------------------------------------------------------------- ImageFolder trees

def folder(path: str, split: str) -> FolderSource:
    root = Path(path)
    split_dir = _split_dir(root, split)
    # class indices come from the train split when there is one, so train and val agree
    class_root = root / "train" if (root / "train").is_dir() else split_dir
    classes = sorted(d.name for d in class_root.iterdir() if d.is_dir())
    if not classes:
        raise VitsamError(f"no class folders in {str(class_root)!r}: expected {root}/<split>/<class>/<image files>")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        if class_dir.name not in index:
            raise VitsamError(f"class folder {str(class_dir)!r} has no counterpart in {str(class_root)!r}; "
                              f"known classes: {', '.join(classes)}")
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += images
        labels += [index[class_dir.name]] * len(images)
    if not files:
        raise VitsamError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {str(split_dir)!r}")
    return FolderSource(files, torch.tensor(labels, dtype=torch.long), classes, f"folder:{root} ({split})")


def _split_dir(root: Path, split: str) -> Path:
    names = ["train"] if split == "train" else ["val", "test"]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise VitsamError(f"image folder {str(root)!r} has no {' or '.join(map(repr, names))} folder: expected "
                      f"{root}/train/<class>/<images> and {root}/val/<class>/<images>")


# --------------------------------------------------------------------------- numpy arrays

def arrays(path: str, split: str) -> TensorSource:
    """A .npz with ``{split}_images``/``{split}_labels`` or ``images``/``labels`` (then used for
    every split, e.g. one shifted test set), or a dir with ``{split}_images.npy`` /
    ``{split}_labels.npy``. An optional ``classes`` array (strings) names the classes."""
    root = Path(path)
    names = [split] + (["val"] if split == "test" else [])
    if root.is_file():
        data = _np_load(root)
        keys = [(f"{n}_images", f"{n}_labels") for n in names] + [("images", "labels")]
        found = next(((i, l) for i, l in keys if i in data and l in data), None)
        if found is None:
            raise VitsamError(f"{str(root)!r} has arrays {sorted(data)}; expected {split}_images and "
                              f"{split}_labels, or images and labels")
        images, labels, classes = data[found[0]], data[found[1]], data.get("classes")
    elif root.is_dir():
        stem = next((n for n in names if (root / f"{n}_images.npy").is_file()), None)
        if stem is None:
            raise VitsamError(f"{str(root)!r} has no {split}_images.npy (expected {split}_images.npy "
                              f"and {split}_labels.npy)")
        images = _np_load(root / f"{stem}_images.npy")
        labels = _np_load(root / f"{stem}_labels.npy")
        classes = _np_load(root / "classes.npy") if (root / "classes.npy").is_file() else None
    else:
        raise VitsamError(f"arrays path {str(root)!r} does not exist: give a .npz file or a folder "
                          f"with {split}_images.npy and {split}_labels.npy")
    return _tensor_source_from_arrays(images, labels, classes, f"arrays:{root} ({split})")


def _np_load(path: Path):
    try:
        loaded = np.load(path, allow_pickle=False)
        return dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    except (OSError, ValueError) as err:
        raise VitsamError(f"cannot read numpy file {str(path)!r}: {err}") from None


def _tensor_source_from_arrays(images: np.ndarray, labels: np.ndarray, classes, name: str) -> TensorSource:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise VitsamError(f"{name}: images must be uint8 (N, H, W) or (N, H, W, C), "
                          f"got {images.dtype} {images.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise VitsamError(f"{name}: labels must be integers of shape (N,), got {labels.dtype} {labels.shape}")
    # (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    return TensorSource(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)),
                        classes, name)


SOURCE_KINDS = {
    "fashion_mnist": fashion_mnist,
    "cifar10": functools.partial(cifar, "cifar10"),
    "cifar100": functools.partial(cifar, "cifar100"),
    "folder": folder,
    "arrays": arrays,
}
