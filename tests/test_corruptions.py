"""Corruptions: every name x severity on grey 28 px and colour 64 px batches, seeding,
severity ordering, and the closed-form ones against independent formulas."""
import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, corrupt, resolve_params
from vitsam.robustness.corruptions.functions import disk_kernel
from vitsam.robustness.corruptions.params import CIFAR, IMAGENET

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "spatter", "elastic_transform"}


def natural_images(batch, channels, size, seed=0):
    """Smooth random shapes with edges, in [0.05, 0.95]: blurs and warps have something to move."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    edges = (torch.rand(batch, 1, 4, 4, generator=g) > 0.5).float()
    edges = F.interpolate(edges, size=(size, size), mode="nearest")
    return (0.6 * smooth + 0.4 * edges).clamp(0.05, 0.95)


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


def test_dtype_and_float64_are_kept():
    images = natural_images(2, 3, 32).double()
    out = corrupt(images, "fog", 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64


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


def test_contrast_matches_formula():
    images = natural_images(3, 3, 40)
    for severity, c in enumerate(IMAGENET["contrast"], 1):
        means = images.mean((2, 3), keepdim=True)
        expected = ((images - means) * c + means).clamp(0, 1)
        torch.testing.assert_close(corrupt(images, "contrast", severity, params="imagenet"), expected)


def _hsv_reference(images, change):
    """Per pixel through Python's colorsys (an independent HSV implementation)."""
    out = images.clone()
    array = images.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    result = []
    for r, g, b in array:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        h, s, v = change(h, s, v)
        result.append(colorsys.hsv_to_rgb(h, s, v))
    out = torch.tensor(result, dtype=images.dtype).reshape(images.shape[0], *images.shape[2:], 3)
    return out.permute(0, 3, 1, 2).clamp(0, 1)


def test_brightness_and_saturate_match_colorsys():
    images = natural_images(2, 3, 12, seed=5)
    for severity in (1, 5):
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


def test_pixelate_matches_pil_box_resampling():
    images = natural_images(2, 1, 28, seed=2)
    for severity in (1, 3, 5):
        c = CIFAR["pixelate"][severity - 1]
        expected = []
        for image in images[:, 0].numpy():
            small = Image.fromarray(image, mode="F").resize((int(28 * c), int(28 * c)), Image.BOX)
            expected.append(np.asarray(small.resize((28, 28), Image.BOX)))
        expected = torch.from_numpy(np.stack(expected))[:, None]
        torch.testing.assert_close(corrupt(images, "pixelate", severity), expected, atol=1e-5, rtol=0)


def test_jpeg_is_a_pillow_round_trip():
    images = natural_images(2, 3, 32, seed=3)
    out = corrupt(images, "jpeg_compression", 5, params="imagenet")
    array = (images[0].permute(1, 2, 0) * 255).round().byte().numpy()
    import io
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=IMAGENET["jpeg_compression"][4])
    expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(out[0], expected)


def test_gaussian_noise_has_the_table_standard_deviation():
    images = torch.full((8, 3, 64, 64), 0.5)
    out = corrupt(images, "gaussian_noise", 2, torch.Generator().manual_seed(0), params="cifar")
    assert abs((out - images).std().item() - CIFAR["gaussian_noise"][1]) < 0.002


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
                                   atol=1e-5, rtol=0)


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
