"""Data package: sources on tiny fixtures written here, transforms against slicing and
flipping, class-balanced subsets, and loader determinism / resume / rank sharding."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitsam.data import (Loader, center_crop, class_balanced_subset, load_source, random_resized_crop,
                         resized_crop, sample_crop_boxes, subset_source)
from vitsam.data.sources import FASHION_MNIST_DIR, TensorSource
from vitsam.data.transforms import eval_box, jpeg_draft, pil_resized_crop, sampled_crop, sliced_crop, to_float
from vitsam.errors import VitsamError


# --------------------------------------------------------------------------- fixtures

def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 12, True), ("t10k", 5, False)):  # one gzip split, one raw
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{'.gz' if gz else ''}", np.arange(n) % 10, gz)
    return tmp_path


def write_pickle(path: Path, obj) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official batches are protocol-2 pickles


@pytest.fixture
def cifar10_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_pickle(root / name, {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 9]})
    write_pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return tmp_path  # the parent of the extracted folder


def png(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imagenet"
    for split, count in (("train", 5), ("val", 2)):
        for c, name in enumerate(["dog", "cat"]):  # sorted: cat = 0, dog = 1
            for i in range(count):
                png(root / split / name / f"{i}.png", 10 + 3 * i, 14 - i, seed=100 * c + i)
    (root / "val" / "dog" / "broken.png").write_bytes(b"not a png at all")
    return root


# --------------------------------------------------------------------------- sources

def test_fashion_mnist_idx_gz_and_raw(fashion_dir):
    train = load_source("fashion_mnist", "train", data_dir=str(fashion_dir))
    test = load_source(f"fashion_mnist:{fashion_dir}", "val")
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (5, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [i % 10 for i in range(12)]
    assert train.num_classes == 10 and train.classes[9] == "Ankle boot" and train.in_chans == 1
    raw = np.frombuffer(gzip.decompress((fashion_dir / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    assert torch.equal(train.images.flatten(), torch.from_numpy(raw.copy()))


def test_missing_fashion_mnist_names_path_and_fix(tmp_path):
    with pytest.raises(VitsamError) as err:
        load_source("fashion_mnist", "train", data_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_cifar10_numpy_batches_from_parent_dir(cifar10_dir):
    train = load_source(f"cifar10:{cifar10_dir}", "train")
    test = load_source(f"cifar10:{cifar10_dir / 'cifar-10-batches-py'}", "test")
    assert train.images.shape == (15, 3, 32, 32) and len(test) == 3 and train.in_chans == 3
    assert train.labels.tolist() == [0, 1, 9] * 5 and train.classes == [f"c{i}" for i in range(10)]
    batch = pickle.loads((cifar10_dir / "cifar-10-batches-py" / "test_batch").read_bytes())
    # row = R plane, G plane, B plane of 32x32
    assert torch.equal(test.images[1, 2].flatten(), torch.from_numpy(batch[b"data"][1, 2048:]))


def test_cifar100_plain_dict_batches(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name in ("train", "test"):
        write_pickle(root / name, {b"data": bytes(range(256)) * 24, b"fine_labels": [3, 99]})  # 2 images
    write_pickle(root / "meta", {b"fine_label_names": [f"k{i}".encode() for i in range(100)]})
    source = load_source(f"cifar100:{root}", "train")
    assert source.images.shape == (2, 3, 32, 32) and source.num_classes == 100
    assert source.labels.tolist() == [3, 99] and source.images[0, 0, 0, :3].tolist() == [0, 1, 2]


def test_cifar_refuses_pickled_code(cifar10_dir):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = cifar10_dir / "cifar-10-batches-py" / "test_batch"
    write_pickle(path, {b"data": Evil(), b"labels": []})
    with pytest.raises(VitsamError, match=r"refusing to load global \w+\.print") as err:
        load_source(f"cifar10:{cifar10_dir}", "test")
    assert str(path) in str(err.value)


def test_missing_cifar_says_where_to_download(tmp_path):
    with pytest.raises(VitsamError) as err:
        load_source(f"cifar10:{tmp_path}", "train")
    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "cifar-10-batches-py" in message


def test_image_folder_lazy_labels_and_corrupt_file(image_folder):
    train = load_source(f"folder:{image_folder}", "train")
    val = load_source(f"folder:{image_folder}", "test")
    assert train.classes == ["cat", "dog"] and len(train) == 10 and train.in_chans == 3
    assert train.labels.tolist() == [0] * 5 + [1] * 5
    assert val.labels.tolist() == [0, 0, 1, 1, 1]  # broken.png is listed; it fails when decoded
    expected = png(image_folder / "x.png", 10 + 3 * 1, 14 - 1, seed=100 * 0 + 1)  # what dog/1.png holds
    with train.open(6) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)
    broken = val.files.index(image_folder / "val" / "dog" / "broken.png")
    with pytest.raises(VitsamError, match="broken.png"):
        with val.open(broken) as image:
            image.load()


def test_missing_split_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(VitsamError, match="'val' or 'test'"):
        load_source(f"folder:{tmp_path}", "test")


def test_arrays_npz_and_npy_dir(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)  # (N, H, W, C)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([0, 2, 1, 2]))
    source = load_source(f"arrays:{tmp_path / 'set.npz'}", "test")
    assert source.images.shape == (4, 3, 5, 6) and source.num_classes == 3
    assert torch.equal(source.images[1], torch.from_numpy(images[1]).permute(2, 0, 1))
    np.save(tmp_path / "train_images.npy", images[..., 0])  # (N, H, W)
    np.save(tmp_path / "train_labels.npy", np.array([1, 0, 1, 0]))
    np.save(tmp_path / "classes.npy", np.array(["no", "yes"]))
    source = load_source(f"arrays:{tmp_path}", "train")
    assert source.images.shape == (4, 1, 5, 6) and source.classes == ["no", "yes"]
    assert source.labels.dtype == torch.int64 and source.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(VitsamError, match="test_images.npy"):
        load_source(f"arrays:{tmp_path}", "test")


def test_unknown_kind_and_split_list_choices(tmp_path):
    with pytest.raises(VitsamError) as err:
        load_source("mnist:/x", "train")
    assert "'mnist'" in str(err.value)
    for kind in ("fashion_mnist", "cifar10", "cifar100", "folder", "arrays"):
        assert kind in str(err.value)
    with pytest.raises(VitsamError, match="train"):
        load_source("fashion_mnist", "dev")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    train, test = load_source("fashion_mnist", "train"), load_source("fashion_mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.num_classes == 10 and torch.bincount(train.labels).tolist() == [6000] * 10


# --------------------------------------------------------------------------- transforms

def uint8_images(*shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_full_box_is_identity_and_flip_flips():
    images = uint8_images(3, 2, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(3, 1)
    no_flip, flip = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    assert torch.allclose(resized_crop(images, boxes, no_flip, 8), images / 255, atol=1e-5)
    assert torch.allclose(resized_crop(images, boxes, flip, 8), images.flip(-1) / 255, atol=1e-5)


def test_box_at_native_size_equals_slicing():
    images = uint8_images(2, 1, 9, 11)
    boxes = torch.tensor([[2.0, 3.0, 4.0, 4.0], [5.0, 0.0, 4.0, 4.0]])  # (top, left, h, w)
    out = resized_crop(images, boxes, torch.tensor([False, True]), 4)
    assert torch.allclose(out[0], images[0, :, 2:6, 3:7] / 255, atol=1e-5)
    assert torch.allclose(out[1], images[1, :, 5:9, 0:4].flip(-1) / 255, atol=1e-5)


def test_whole_pixel_crops_skip_resampling_with_the_same_values():
    # boxes of the output size at whole-pixel corners: the gather equals grid_sample's
    # bilinear taps at pixel centres, flips included, in uint8 and float, 1 and 3 channels
    for chans in (1, 3):
        images = uint8_images(6, chans, 11, 13, seed=chans)
        corners = torch.randint(0, 5, (6, 2), generator=torch.Generator().manual_seed(chans)).double()
        boxes = torch.cat([corners, torch.full((6, 2), 7.0, dtype=torch.float64)], 1)
        flips = torch.tensor([True, False, True, True, False, False])
        for x in (images, images / 255):
            expected = sampled_crop(x, boxes, flips, 7)
            assert torch.allclose(to_float(sliced_crop(x, boxes, flips, 7)), expected, atol=1e-6)
            assert torch.allclose(resized_crop(x, boxes, flips, 7), expected, atol=1e-6)
    half_pixel = torch.tensor([[0.5, 0.0, 7.0, 7.0]])  # not whole pixels: resampled
    assert torch.equal(resized_crop(images[:1], half_pixel, flips[:1], 7),
                       sampled_crop(images[:1], half_pixel, flips[:1], 7))


def test_random_resized_crop_shape_range_and_determinism():
    images = uint8_images(16, 3, 20, 24)
    out = random_resized_crop(images, 12, torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, 12, 12) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, random_resized_crop(images, 12, torch.Generator().manual_seed(1)))


def test_crop_boxes_respect_scale_and_ratio():
    sizes = torch.tensor([[100, 100]]).expand(4000, 2)
    top, left, h, w = sample_crop_boxes(sizes, (0.2, 0.5), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)).T
    area = h * w / 100 ** 2
    assert area.min() >= 0.2 - 0.02 and area.max() <= 0.5 + 0.02  # rounding to whole pixels
    assert area.min() < 0.21 and area.max() > 0.49                 # and the range is explored
    assert (w / h).min() >= 3 / 4 - 0.03 and (w / h).max() <= 4 / 3 + 0.03
    assert top.min() >= 0 and left.min() >= 0 and (top + h).max() <= 100 and (left + w).max() <= 100
    assert (top + h).max() == 100 and left.min() == 0             # boxes reach the edges


def test_crop_box_falls_back_to_center_crop():
    # a 10 x 1000 strip: no box of >= 90% area and ratio <= 4/3 fits, so torchvision's
    # fallback takes the full height at the widest allowed ratio, centered
    box = sample_crop_boxes(torch.tensor([[10, 1000]]), (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator())
    assert box.tolist() == [[0.0, 493.0, 10.0, 13.0]]


def test_center_crop_without_resize_is_slicing():
    images = uint8_images(2, 3, 32, 32)
    assert torch.allclose(center_crop(images, 28, 0.875), images[..., 2:30, 2:30] / 255)
    assert torch.allclose(center_crop(images, 32, 1.0), images / 255)


def test_center_crop_resizes_shorter_side():
    images = torch.full((1, 1, 20, 40), 200, dtype=torch.uint8)  # shorter side 20 -> 16, then crop 14
    out = center_crop(images, 14, 0.875)
    assert out.shape == (1, 1, 14, 14) and torch.allclose(out, torch.full_like(out, 200 / 255))


def test_pil_path_agrees_with_tensor_path():
    array = uint8_images(32, 32, 3).numpy()
    image = Image.fromarray(array)
    box = eval_box(32, 32, 28, 0.875)
    assert box == (2.0, 2.0, 28.0, 28.0)
    expected = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.equal(pil_resized_crop(image, box, False, 28), expected[:, 2:30, 2:30])
    assert torch.equal(pil_resized_crop(image, (0, 0, 32, 32), True, 32), expected.flip(-1))


def smooth_photo(height: int, width: int) -> np.ndarray:
    """A photo-like uint8 (H, W, 3) image: smooth gradients, a disc, a bar; little detail
    above the Nyquist frequency of an 8x reduction, like most of a real photo."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05).astype(float)
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.3 + 0.5 * y * x, 0.2 + 0.6 * disc], -1)
    rgb[:, int(0.7 * width):int(0.75 * width), 1] = 0.9
    return np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)


def test_jpeg_decodes_at_reduced_scale_close_to_the_full_decode(tmp_path):
    Image.fromarray(smooth_photo(192, 256)).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(smooth_photo(192, 256)).save(tmp_path / "photo.png")
    box = (8.0, 16.0, 160.0, 200.0)
    with Image.open(tmp_path / "photo.jpg") as image:
        assert jpeg_draft(image, box, 50) == (4.0, 8.0, 80.0, 100.0)   # 160 >= 2 * 50, < 4 * 50: half scale
    with Image.open(tmp_path / "photo.jpg") as image:
        assert jpeg_draft(image, box, 40) == (2.0, 4.0, 40.0, 50.0)    # 160 >= 4 * 40: a quarter
    with Image.open(tmp_path / "photo.jpg") as image:
        assert jpeg_draft(image, box, 16) == (1.0, 2.0, 20.0, 25.0)    # 160 >= 8 * 16: an eighth
        assert image.size == (32, 24)
        reduced = pil_resized_crop(image.convert("RGB"), (1.0, 2.0, 20.0, 25.0), True, 16).float()
    with Image.open(tmp_path / "photo.jpg") as image:
        assert jpeg_draft(image, box, 100) == box                      # too small a box to reduce
        full = pil_resized_crop(image.convert("RGB"), box, True, 16).float()
    with Image.open(tmp_path / "photo.png") as image:
        assert jpeg_draft(image, box, 16) == box                       # not a JPEG: full size
    # measured 0.7 and 7 of 255; a box misplaced by the scale, or a lost flip, differs by ~60
    assert (reduced - full).abs().mean() < 1.5 and (reduced - full).abs().max() < 12


# --------------------------------------------------------------------------- subsets

def test_class_balanced_subset_counts_and_determinism():
    shuffle = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 40)[shuffle]
    for fraction, counts in ((0.5, [5, 10, 20]), (0.25, [3, 5, 10]), (0.1, [1, 2, 4])):
        chosen = class_balanced_subset(labels, fraction, seed=3)
        assert torch.bincount(labels[chosen]).tolist() == counts
        assert torch.equal(chosen, chosen.unique())  # sorted, no repeats
        assert torch.equal(chosen, class_balanced_subset(labels, fraction, seed=3))
    assert not torch.equal(class_balanced_subset(labels, 0.5, 3), class_balanced_subset(labels, 0.5, 4))


def test_class_balanced_source_keeps_images_with_labels():
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1)
    source = TensorSource(images, torch.arange(12) % 3, ["a", "b", "c"], "toy")
    half = subset_source(source, 0.5, seed=0)
    assert len(half) == 6 and torch.bincount(half.labels).tolist() == [2, 2, 2]
    assert torch.equal(half.images.flatten().long() % 3, half.labels)
    assert subset_source(source, 1.0, seed=0) is source


# --------------------------------------------------------------------------- loader

def toy_source(n=50, size=12):
    return TensorSource(uint8_images(n, 1, size, size), torch.arange(n) % 5, list("abcde"), "toy")


def test_loader_batches_and_epoch_coverage():
    source = toy_source()
    loader = Loader(source, 8, train=True, img_size=10, seed=1)
    batches = list(loader.iterate(0))
    assert len(batches) == len(loader) == 6  # 50 // 8, last partial batch dropped
    images, labels = batches[0]
    assert images.shape == (8, 1, 10, 10) and images.dtype == torch.float32 and labels.dtype == torch.int64
    seen = loader.epoch_indices(0)[:48]
    assert torch.equal(torch.cat([l for _, l in batches]), source.labels[seen])
    assert len(seen.unique()) == 48
    assert not torch.equal(loader.epoch_indices(0), loader.epoch_indices(1))


def test_eval_loader_keeps_order_and_last_batch():
    source = toy_source(n=10)
    loader = Loader(source, 4, train=False, img_size=12, eval_crop_fraction=1.0)
    batches = list(loader)
    assert [len(l) for _, l in batches] == [4, 4, 2]
    assert torch.allclose(torch.cat([x for x, _ in batches]), source.images / 255)


def test_loader_resume_matches_uninterrupted_run():
    source = toy_source()
    full = Loader(source, 8, train=True, img_size=10, seed=7)
    run = [list(full.iterate(epoch)) for epoch in (0, 1)]
    resumed = Loader(source, 8, train=True, img_size=10, seed=7)  # a fresh process
    tail = list(resumed.iterate(1, start_step=4))
    assert len(tail) == 2
    for (x, y), (x_ref, y_ref) in zip(tail, run[1][4:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    resumed.set_epoch(0)
    assert all(torch.equal(x, x_ref) for (x, _), (x_ref, _) in zip(resumed, run[0]))
    other_seed = next(Loader(source, 8, train=True, img_size=10, seed=8).iterate(0))[0]
    assert not torch.equal(other_seed, run[0][0][0])


def test_rank_shards_cover_epoch_without_overlap():
    source = toy_source(n=48)
    shards = [Loader(source, 4, True, 10, seed=0, rank=r, world_size=3).epoch_indices(5) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    assert sorted(torch.cat(shards).tolist()) == list(range(48))
    # 50 images on 4 ranks: padded by wrapping to 52, every image seen, equal shard sizes
    source = toy_source(n=50)
    shards = [Loader(source, 4, True, 10, seed=0, rank=r, world_size=4).epoch_indices(0) for r in range(4)]
    assert {len(s) for s in shards} == {13} and set(torch.cat(shards).tolist()) == set(range(50))


def test_loader_rejects_batch_larger_than_shard():
    with pytest.raises(VitsamError, match="batch size 64"):
        Loader(toy_source(n=50), 64, train=True, img_size=10)


def test_folder_loader_deterministic_with_workers(image_folder):
    source = load_source(f"folder:{image_folder}", "train")
    inline = Loader(source, 4, train=True, img_size=8, seed=3)
    batches = list(inline.iterate(2))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 8, 8) and batches[0][0].max() <= 1
    workers = Loader(source, 4, train=True, img_size=8, seed=3, num_workers=2)
    for (x, y), (x_ref, y_ref) in zip(workers.iterate(2, start_step=1), batches[1:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    val = Loader(load_source(f"folder:{image_folder}", "val"), 5, train=False, img_size=8, num_workers=1)
    with pytest.raises(VitsamError, match="^cannot decode image file .*broken.png"):  # not a worker traceback
        list(val)
