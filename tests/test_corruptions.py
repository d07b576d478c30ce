"""Corruptions against the reference: the published parameter tables, stored outputs of the
reference package for every deterministic corruption, stored statistics of the change for
every random one, the glass-blur sweep run literally, PIL and Pillow where we mirror them,
and the fast filters against dense computations. Stored data: tests/data/corruptions/,
made by tools/corruption_reference.py in the imagecorruptions environment."""
import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, corrupt, frost_source, resolve_params
from vitsam.robustness.corruptions import frost as frost_module
from vitsam.robustness.corruptions import ops
from vitsam.robustness.corruptions.functions import FUNCTIONS, disk_kernel
from vitsam.robustness.corruptions.params import CIFAR, IMAGENET

REFERENCE = np.load(Path(__file__).parent / "data" / "corruptions" / "reference.npz")
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "spatter", "elastic_transform"}


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def natural_images(batch, channels, size, seed=0):
    """Smooth random shapes with edges, in [0.05, 0.95]: blurs and warps have something to move."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    edges = (torch.rand(batch, 1, 4, 4, generator=g) > 0.5).float()
    edges = F.interpolate(edges, size=(size, size), mode="nearest")
    return (0.6 * smooth + 0.4 * edges).clamp(0.05, 0.95)


def as_tensor(array):
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(array)).movedim(-1, -3).float() / 255


# --------------------------------------------------------------------------- the published tables

def test_parameter_tables_are_the_published_ones():
    """A fixed copy of the constants in hendrycks/robustness ImageNet-C/create_c/
    make_imagenet_c.py and make_cifar_c.py; zoom blur as its np.arange arguments."""
    imagenet = {
        "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38], "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [.03, .06, .09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
        "brightness": [.1, .2, .3, .4, .5], "contrast": [0.4, .3, .2, .1, .05],
        "elastic_transform": [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25], "jpeg_compression": [25, 18, 15, 10, 7],
        "speckle_noise": [.15, .2, 0.35, 0.45, 0.6], "gaussian_blur": [1, 2, 3, 4, 6],
        "spatter": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)],
        "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    }
    cifar = {
        "gaussian_noise": [0.04, 0.06, .08, .09, .10], "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [.01, .02, .03, .05, .07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [.05, .1, .15, .2, .3], "contrast": [.75, .5, .4, .3, 0.15],
        "elastic_transform": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65], "jpeg_compression": [80, 65, 58, 50, 40],
        "speckle_noise": [.06, .1, .12, .16, .2], "gaussian_blur": [.4, .6, 0.7, .8, 1],
        "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
        "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    }
    for ours, published in ((IMAGENET, imagenet), (CIFAR, cifar)):
        assert set(ours) == set(published) == set(ALL_CORRUPTIONS)
        for name, table in published.items():
            if name == "zoom_blur":
                table = [np.arange(*args) for args in table]
                assert all(np.array_equal(a, b) for a, b in zip(ours[name], table)), name
            else:
                assert [tuple(np.atleast_1d(v)) for v in ours[name]] == [tuple(np.atleast_1d(v)) for v in table], name


# --------------------------------------------------------------------------- stored reference outputs

# Largest |ours - reference| allowed, in 8-bit levels. The stored outputs are fixed point
# (1/256 of a level), so 0.004 is float rounding on both sides; pixelate and JPEG are 8-bit
# images on both sides and must agree exactly.
LEVELS_TOLERANCE = {"pixelate": 0.0, "jpeg_compression": 0.0}


@pytest.mark.parametrize("name", sorted(n for n in ALL_CORRUPTIONS if n not in RANDOM))
def test_deterministic_corruptions_equal_stored_reference_outputs(name):
    """Every severity on a 32 x 40 image, at the table's own pixel lengths (scale 1), against
    the reference's float output (pixelate: ImageNet-C's PIL BOX both ways)."""
    image = as_tensor(REFERENCE["deterministic_image"])[None]
    expected = torch.from_numpy(REFERENCE[f"deterministic/{name}"].astype(np.float32) / 256).movedim(-1, -3)
    for severity in range(1, 6):
        out = FUNCTIONS[name](image, IMAGENET[name][severity - 1], 1.0, None, "imagenet").clamp(0, 1)[0] * 255
        worst = (out - expected[severity - 1]).abs().max().item()
        assert worst <= LEVELS_TOLERANCE.get(name, 0.004), (name, severity, worst)


def reference_statistics_images():
    """The statistics images: each stored 56 px image repeated 4x along both axes (224 px)."""
    return as_tensor(REFERENCE["stat_images"].repeat(4, axis=1).repeat(4, axis=2))


# relative tolerance on the mean change and the standard deviation, beyond 3 standard
# errors of the draws: the noises are exact distributions; spatter's edges and distance
# transform are stand-ins for OpenCV's (tools/FIDELITY.md); procedural frost copies the
# photographs' colours and spread, not their texture
RELATIVE_TOLERANCE = {"spatter": 0.12, "frost": 0.08, "fog": 0.06, "elastic_transform": 0.06}
DRAWS = {"frost": 4, "fog": 4, "elastic_transform": 3}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_corruptions_change_images_as_much_as_the_reference(name):
    """Mean |corrupted - clean| and the corrupted images' standard deviation, per severity,
    on the same four 224 px images as the stored reference statistics (ImageNet-C table)."""
    images = reference_statistics_images()
    reference = REFERENCE[f"random/{name}"].astype(np.float64)          # (severity, statistic, draw)
    tolerance = RELATIVE_TOLERANCE.get(name, 0.03)
    if name == "frost" and frost_source() == "procedural":
        tolerance = 0.15
    for severity in range(1, 6):
        draws = []
        for draw in range(DRAWS.get(name, 2)):
            g = torch.Generator().manual_seed(1000 * severity + draw)
            out = corrupt(images, name, severity, g, params="imagenet").double()
            draws.append(torch.stack([(out - images).abs().mean((1, 2, 3)), out.std((1, 2, 3))], 1))
        ours = torch.cat(draws).numpy()                                   # (draw, statistic)
        for stat in (0, 1):
            mine, theirs = ours[:, stat], reference[severity - 1, stat]
            error = np.sqrt(mine.var(ddof=1) / len(mine) + theirs.var(ddof=1) / len(theirs))
            gap = abs(mine.mean() - theirs.mean())
            assert gap <= tolerance * theirs.mean() + 3 * error, (name, severity, stat, mine.mean(), theirs.mean())


# --------------------------------------------------------------------------- random corruptions with the reference's draws

class StoredUniforms:
    """Stands in for ops.uniform: returns the reference's recorded draws, in order."""

    def __init__(self, values):
        self.values, self.used = torch.from_numpy(np.asarray(values, dtype=np.float64)), 0

    def __call__(self, shape, low, high, generator, like):
        count = int(np.prod(shape))
        out = self.values[self.used:self.used + count].view(shape)
        self.used += count
        return out.to(like.dtype)


@pytest.mark.parametrize("severity", [1, 3])
def test_elastic_transform_with_the_originals_draws_is_the_original(monkeypatch, severity):
    """make_imagenet_c.py's elastic transform (cv2.warpAffine, then map_coordinates) on a
    32 x 40 image with its recorded uniforms (affine jitter, then the two fields) fed to
    ours. cv2 interpolates warpAffine in 1/32-pixel steps, hence the tolerance."""
    image = as_tensor(REFERENCE["deterministic_image"])[None]
    monkeypatch.setattr(ops, "uniform", StoredUniforms(REFERENCE[f"draws/elastic_{severity}/uniforms"]))
    out = FUNCTIONS["elastic_transform"](image, IMAGENET["elastic_transform"][severity - 1], 1.0, None, "imagenet")
    expected = torch.from_numpy(REFERENCE[f"draws/elastic_{severity}/out"].astype(np.float32) / 256).movedim(-1, -3)
    difference = (out.clamp(0, 1)[0] * 255 - expected).abs()
    assert difference.mean() < 0.15 and difference.max() < 3, (difference.mean(), difference.max())


def test_motion_blur_at_given_angles_is_imagecorruptions():
    image = as_tensor(REFERENCE["deterministic_image"])[None]
    for angle, expected in zip(REFERENCE["draws/motion/angles"], REFERENCE["draws/motion/out"]):
        out = ops.motion_blur(image, 15, 8.0, torch.tensor([angle]))[0] * 255
        expected = torch.from_numpy(expected.astype(np.float32) / 256).movedim(-1, -3)
        assert (out - expected).abs().max() < 0.01, angle


def test_plasma_fractal_with_the_references_draws_is_the_reference(monkeypatch):
    """Diamond-square on 32 x 32: the reference draws wibble * U(-wibble, wibble) per fill
    (squares, then the two diamond sets, level by level); ours draws U(-1, 1) once and
    scales by wibble^2, so the recorded draws are divided by each level's wibble."""
    draws, scaled, used, wibble, cells = REFERENCE["draws/plasma/uniforms"], [], 0, 100.0, 1
    while used < len(draws):
        for _ in range(3):
            scaled.append(draws[used:used + cells] / wibble)
            used += cells
        wibble, cells = wibble / 1.7, cells * 4
    monkeypatch.setattr(ops, "uniform", StoredUniforms(np.concatenate(scaled + [[0.0]])))
    fractal = ops.plasma_fractal(1, 32, 1.7, None, torch.zeros((), dtype=torch.float64))[0]
    torch.testing.assert_close(fractal, torch.from_numpy(REFERENCE["draws/plasma/out"]), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- glass blur's sweep, literally

def sequential_glass_sweep(image: np.ndarray, dy: np.ndarray, dx: np.ndarray, delta: int) -> np.ndarray:
    """ImageNet-C's loop, statement for statement, on an (H, W, C) array (a numpy view
    assignment: the copy chain the vectorised version reproduces)."""
    x = image.copy()
    height, width = x.shape[:2]
    for h in range(height - delta, delta, -1):
        for w in range(width - delta, delta, -1):
            h_prime, w_prime = h + dy[h, w], w + dx[h, w]
            x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


@pytest.mark.parametrize("delta", [1, 2, 3, 4])
def test_glass_shuffle_is_the_sequential_sweep(delta):
    g = torch.Generator().manual_seed(delta)
    for height, width in ((12, 15), (20, 9)):
        image = torch.rand(2, 3, height, width, generator=g)
        dy, dx = torch.randint(-delta, delta, (2, 2, height, width), generator=g)
        out = ops.glass_shuffle(image, dy, dx, delta)
        for b in range(2):
            expected = sequential_glass_sweep(image[b].permute(1, 2, 0).numpy(), dy[b].numpy(), dx[b].numpy(), delta)
            assert np.array_equal(out[b].permute(1, 2, 0).numpy(), expected)


# --------------------------------------------------------------------------- frost

def write_photographs(folder: Path, sizes, values):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (h, w), value in zip(frost_module.PHOTOS, sizes, values):
        Image.fromarray(value(h, w)).save(folder / name)


def test_frost_uses_the_photographs_in_its_folder(tmp_path, monkeypatch):
    """With $VITSAM_FROST_DIR the five photographs are blended in (here flat colours, PNG so
    exact), and frost_source says so; a folder without them is a clear error."""
    colours = [(10, 90, 30), (40, 50, 60), (100, 0, 70), (90, 90, 90), (0, 0, 100)]   # 0.8 image + 0.6 frost < 1
    write_photographs(tmp_path / "frost", [(300, 300)] * 5,
                      [lambda h, w, c=c: np.full((h, w, 3), c, np.uint8) for c in colours])
    monkeypatch.setenv(frost_module.FROST_DIR_ENV, str(tmp_path / "frost"))
    assert frost_source() == f"photographs ({tmp_path / 'frost'})"
    images = natural_images(6, 3, 40)
    out = corrupt(images, "frost", 2, torch.Generator().manual_seed(0), params="imagenet")
    layers = (out - 0.8 * images) / 0.6                  # severity 2: 0.8 image + 0.6 frost
    allowed = torch.tensor(colours).float() / 255
    for layer in layers:
        assert (allowed - layer.mean((1, 2))).abs().max(1).values.min() < 1e-4
        assert layer.std((1, 2)).max() < 1e-4
    monkeypatch.setenv(frost_module.FROST_DIR_ENV, str(tmp_path))
    with pytest.raises(VitsamError, match="frost1.png"):
        corrupt(images, "frost", 2)


@pytest.mark.parametrize("table, side, zoom", [("imagenet", 224, 1.0), ("imagenet", 112, 0.5),
                                               ("cifar", 32, 0.2), ("cifar", 28, 0.175)])
def test_frost_photographs_are_scaled_like_the_reference(tmp_path, monkeypatch, table, side, zoom):
    """ImageNet-C crops 224 px images from the photograph as it is, CIFAR-10-C resizes it by
    0.2 first, and other sizes in proportion: a horizontal ramp (one level per photograph
    column) must come out with a slope of ``zoom`` photograph columns per image pixel."""
    def ramp(h, w):
        return np.broadcast_to((np.arange(w) * 255 // (w - 1)).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    write_photographs(tmp_path / "frost", [(600, 256)] * 5, [ramp] * 5)
    monkeypatch.setenv(frost_module.FROST_DIR_ENV, str(tmp_path / "frost"))
    layer = frost_module.frost_layers(3, side, side, table, torch.Generator().manual_seed(0), torch.zeros(()))
    assert layer.shape == (3, 3, side, side)
    slope = (layer[..., side // 4, -3] - layer[..., side // 4, 2]) / (side - 5) * 255
    assert torch.allclose(slope, torch.full_like(slope, 1 / zoom), rtol=0.05), slope


def test_procedural_stand_ins_have_the_photographs_colours_and_spread():
    for photo, ((h, w), mean, std) in zip(frost_module._photographs(None), frost_module.PHOTO_STATS):
        assert photo.shape == (3, h, w)
        assert torch.allclose(photo.mean((1, 2)), torch.tensor(mean), atol=0.01)
        assert torch.allclose(photo.std((1, 2)), torch.tensor(std), atol=0.015)


# --------------------------------------------------------------------------- storage

def test_storage_truncates_to_8_bits_and_imagenet_c_stores_as_jpeg_85():
    images = natural_images(2, 3, 32, seed=6)
    plain = corrupt(images, "contrast", 3)
    levels = torch.floor(plain * 255 + 1e-3)
    torch.testing.assert_close(corrupt(images, "contrast", 3, storage="cifar-c"), levels / 255, atol=0, rtol=0)
    expected = []
    for image in levels.permute(0, 2, 3, 1).to(torch.uint8).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=85, optimize=True)    # as make_imagenet_c.py saves
        expected.append(np.asarray(Image.open(buffer)))
    stored = corrupt(images, "contrast", 3, storage="imagenet-c")
    assert torch.equal(stored, as_tensor(np.stack(expected)))
    assert not torch.equal(stored, plain)
    with pytest.raises(VitsamError, match="imagenet-c"):
        corrupt(images, "contrast", 3, storage="jpeg")


# --------------------------------------------------------------------------- fast paths against dense ground truth

@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror"])
def test_banded_filters_equal_the_dense_filter_matrix(mode):
    x = torch.rand(2, 3, 45, 70, dtype=torch.float64)
    for radius in (1, 4, 11, 17, 40):              # banded, and wider than a quarter of the image (dense)
        kernel = torch.rand(2 * radius + 1, dtype=torch.float64)
        dense = ops.filter_matrix(45, kernel, mode) @ x @ ops.filter_matrix(70, kernel, mode).T
        torch.testing.assert_close(ops.separable(x, kernel, mode), dense)


def test_fft_correlation_equals_a_direct_convolution():
    x = torch.rand(2, 3, 30, 41)
    for size in (3, 5, 9, 21):
        kernel = torch.rand(size, size)
        padded = F.pad(x, (size // 2,) * 4, mode="reflect")                  # torch 'reflect' is reflect-101
        direct = F.conv2d(padded, kernel[None, None].expand(3, 1, -1, -1), groups=3)
        torch.testing.assert_close(ops.correlate2d(x, kernel), direct, atol=1e-5, rtol=1e-5)


def test_edge_distance_is_the_exact_capped_euclidean_distance():
    g = torch.Generator().manual_seed(0)
    edges = torch.rand(2, 30, 50, generator=g) < 0.01
    rows, cols = torch.meshgrid(torch.arange(30.), torch.arange(50.), indexing="ij")
    for b in range(2):
        points = torch.nonzero(edges[b]).float()
        brute = ((rows[..., None] - points[:, 0]) ** 2 + (cols[..., None] - points[:, 1]) ** 2).sqrt().amin(-1)
        torch.testing.assert_close(ops.edge_distance(edges, 7)[b], brute.clamp_max(7))


def test_motion_blur_of_a_batch_equals_one_image_at_a_time():
    """Batches of more than 4 images take the gather path, single images the slice path."""
    x = natural_images(6, 3, 30, seed=8)[..., :25]
    angles = torch.tensor([-45., -10, 0, 20, 44.9, 89])
    for radius, sigma in ((5, 3.0), (30, 10.0)):                  # the second leaves the image
        batch = ops.motion_blur(x, radius, sigma, angles)
        for i in range(6):
            assert torch.equal(batch[i:i + 1], ops.motion_blur(x[i:i + 1], radius, sigma, angles[i:i + 1]))


def test_a_batch_and_its_images_one_by_one_agree():
    """Chunking a batch (CPU) must not change a deterministic corruption."""
    images = natural_images(5, 3, 224, seed=7)
    for name in ("defocus_blur", "zoom_blur", "pixelate", "saturate"):
        whole = corrupt(images, name, 3)
        single = torch.cat([corrupt(image[None], name, 3) for image in images])
        assert torch.equal(whole, single), name


# --------------------------------------------------------------------------- every corruption, small images

CASES = [(natural_images(4, 1, 28), "28px grey"), (natural_images(2, 3, 64, seed=1), "64px colour")]


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_severity_keeps_shape_range_and_is_seeded(name):
    for images, _ in CASES:
        for severity in range(1, 6):
            out = corrupt(images, name, severity, torch.Generator().manual_seed(3))
            assert out.shape == images.shape and out.dtype == images.dtype
            assert out.min() >= 0 and out.max() <= 1
            again = corrupt(images, name, severity, torch.Generator().manual_seed(3))
            assert torch.equal(out, again)
        if name in RANDOM:
            other = corrupt(images, name, 5, torch.Generator().manual_seed(4))
            assert not torch.equal(out, other)


def test_images_of_a_batch_get_their_own_randomness():
    twins = natural_images(1, 3, 32).expand(2, -1, -1, -1).contiguous()
    for name in sorted(RANDOM):
        out = corrupt(twins, name, 3, torch.Generator().manual_seed(0))
        assert not torch.equal(out[0], out[1]), name


def test_input_is_not_modified_and_float64_is_kept():
    images = natural_images(2, 3, 32)
    copy = images.clone()
    for name in ALL_CORRUPTIONS:
        corrupt(images, name, 2, torch.Generator().manual_seed(0))
        assert torch.equal(images, copy), name
    assert corrupt(images.double(), "fog", 2, torch.Generator().manual_seed(0)).dtype == torch.float64


def distance(name, severity, images):
    return (corrupt(images, name, severity, torch.Generator().manual_seed(0)) - images).abs().mean().item()


# Not monotone in the reference tables themselves: saturate desaturates at severities
# 1-2 and saturates at 3-5 (and is the identity on grey images); CIFAR-10-C's elastic
# severity 1 is a pure affine jitter larger than severity 5's.
NOT_MONOTONE = {"saturate", "elastic_transform"}


@pytest.mark.parametrize("images", [c[0] for c in CASES], ids=[c[1] for c in CASES])
def test_severity_moves_images_further_from_clean(images):
    images = torch.cat([images, natural_images(4, images.shape[1], images.shape[-1], seed=9)])
    for name in ALL_CORRUPTIONS:
        if name in NOT_MONOTONE:
            continue
        first, last = distance(name, 1, images), distance(name, 5, images)
        assert last > first, (name, first, last)
        assert first > 0, name


def _hsv_reference(images, change):
    """Per pixel through Python's colorsys (an independent HSV implementation)."""
    result = []
    for r, g, b in images.permute(0, 2, 3, 1).reshape(-1, 3).tolist():
        h, s, v = change(*colorsys.rgb_to_hsv(r, g, b))
        result.append(colorsys.hsv_to_rgb(h, s, v))
    out = torch.tensor(result, dtype=images.dtype).reshape(images.shape[0], *images.shape[2:], 3)
    return out.permute(0, 3, 1, 2).clamp(0, 1)


def test_brightness_and_saturate_match_colorsys():
    images = natural_images(2, 3, 12, seed=5)
    images[0, :, :3, :3] = 0.4                      # grey pixels: hue 0, saturate turns them red
    images[1, :, :2, :2] = 0.0                      # black: brightness makes them grey
    for severity in (1, 3, 5):
        c = IMAGENET["brightness"][severity - 1]
        expected = _hsv_reference(images, lambda h, s, v: (h, s, min(v + c, 1.0)))
        torch.testing.assert_close(corrupt(images, "brightness", severity, params="imagenet"), expected,
                                   atol=1e-5, rtol=0)
        a, b = IMAGENET["saturate"][severity - 1]
        expected = _hsv_reference(images, lambda h, s, v: (h, min(max(s * a + b, 0.0), 1.0), v))
        torch.testing.assert_close(corrupt(images, "saturate", severity, params="imagenet"), expected,
                                   atol=1e-5, rtol=0)


def test_grey_brightness_adds_and_grey_saturate_is_identity():
    images = natural_images(3, 1, 28)
    c = CIFAR["brightness"][4]
    torch.testing.assert_close(corrupt(images, "brightness", 5), (images + c).clamp(0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(corrupt(images, "saturate", 5), images, atol=1e-6, rtol=0)


def test_pixelate_is_pils_box_resampling_of_8_bit_images():
    """PIL's two passes (horizontal, then vertical, each rounded to 8 bits) down and up, on
    grey and colour, square and not: exactly."""
    def box(image, width, height):
        return image.resize((width, image.size[1]), Image.BOX).resize((width, height), Image.BOX)
    rng = np.random.default_rng(0)
    for shape in ((28, 28), (57, 91, 3), (100, 33, 3)):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        height, width = shape[:2]
        for c in (0.95, 0.65, 0.4, 0.25):
            expected = np.asarray(box(box(Image.fromarray(array), int(width * c), int(height * c)), width, height))
            image = as_tensor(array.reshape(height, width, -1))[None]
            out = FUNCTIONS["pixelate"](image, c, 1.0, None, "imagenet")[0]
            assert torch.equal(out, as_tensor(expected.reshape(height, width, -1))), (shape, c)


def test_jpeg_is_a_pillow_round_trip():
    images = natural_images(2, 3, 32, seed=3)
    out = corrupt(images, "jpeg_compression", 5, params="imagenet")
    array = (images[0].permute(1, 2, 0) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=IMAGENET["jpeg_compression"][4])
    torch.testing.assert_close(out[0], as_tensor(np.array(Image.open(buffer))))


def test_gaussian_blur_preserves_constants_and_matches_a_dense_convolution():
    images = natural_images(1, 1, 16, seed=4)
    sigma = CIFAR["gaussian_blur"][4] * 16 / 32
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).float()
    padded = F.pad(images, (radius,) * 4, mode="replicate")     # skimage's default mode 'nearest'
    expected = F.conv2d(padded, (k[:, None] * k[None, :])[None, None])
    torch.testing.assert_close(corrupt(images, "gaussian_blur", 5), expected, atol=1e-5, rtol=0)
    flat = torch.full((1, 3, 20, 20), 0.3)
    for name in ("gaussian_blur", "defocus_blur", "zoom_blur", "pixelate", "motion_blur"):
        torch.testing.assert_close(corrupt(flat, name, 4, torch.Generator().manual_seed(0)), flat,
                                   atol=1 / 255, rtol=0)       # pixelate works on 8-bit levels


def test_disk_kernel_is_normalised_round_and_centred():
    kernel = disk_kernel(6, 0.5)
    assert abs(kernel.sum().item() - 1) < 1e-5
    torch.testing.assert_close(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0))


def test_parameter_set_choice_and_bad_input():
    assert resolve_params("auto", 28, 28) == "cifar" and resolve_params("auto", 224, 224) == "imagenet"
    images = natural_images(1, 1, 28)
    with pytest.raises(VitsamError, match="gaussian_noise"):
        corrupt(images, "gaussian_nois", 1)
    for severity in (0, 6, 2.5):
        with pytest.raises(VitsamError, match="severity"):
            corrupt(images, "fog", severity)
    with pytest.raises(VitsamError, match="parameter set"):
        corrupt(images, "fog", 1, params="tiny")
    with pytest.raises(VitsamError, match="C = 1 or 3"):
        corrupt(torch.rand(1, 2, 8, 8), "fog", 1)
