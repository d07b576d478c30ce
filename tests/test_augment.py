"""Strong augmentation on batched tensors: each RandAugment operation against PIL (the
reference TF implementation mirrors PIL's ImageOps / ImageEnhance) or a hand-made image,
RandAugment's determinism, mixup's labels."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from vitsam.config import AugmentConfig
from vitsam.data import augment as aug
from vitsam.errors import VitsamError


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def random_uint8(batch=3, chans=3, size=12, seed=0):
    return torch.randint(0, 256, (batch, chans, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def pil_apply(images_u8, fn):
    """Apply a PIL function image by image; back to a float batch in [0, 1]."""
    out = []
    for image in images_u8:
        array = image.permute(1, 2, 0).numpy()
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        result = np.asarray(fn(pil))
        result = result[..., None] if result.ndim == 2 else result
        out.append(torch.from_numpy(result.copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


@pytest.mark.parametrize("chans", [1, 3])
def test_equalize_posterize_solarize_match_pil_exactly(chans):
    images = random_uint8(chans=chans)
    x = images.float() / 255
    # a low-contrast image exercises equalize's lookup table more than uniform noise
    low = (images // 4 + 60).to(torch.uint8)
    assert torch.allclose(aug.equalize(low.float() / 255), pil_apply(low, ImageOps.equalize), atol=1e-6)
    assert torch.allclose(aug.posterize_bits(x, 3), pil_apply(images, lambda im: ImageOps.posterize(im, 3)))
    assert torch.allclose(aug.solarize_threshold(x, 100), pil_apply(images, lambda im: ImageOps.solarize(im, 100)))
    flat = torch.full((1, chans, 5, 5), 0.4)
    assert torch.equal(aug.equalize(flat), to_grid(flat)), "a flat channel is left alone"


def to_grid(x):
    return aug.to_levels(x).float() / 255


@pytest.mark.parametrize("factor", [0.3, 1.9])
def test_enhance_operations_match_pil(factor):
    images = random_uint8(chans=3, seed=1)
    x = images.float() / 255
    for ours, theirs in ((aug.contrast_factor, ImageEnhance.Contrast), (aug.sharpness_factor, ImageEnhance.Sharpness)):
        expected = pil_apply(images, lambda im: theirs(im).enhance(factor))
        # PIL rounds to 8 bits (and its contrast mean to an integer level)
        assert (ours(x, factor) - expected).abs().max() <= 2.5 / 255, ours.__name__
    expected = pil_apply(images, lambda im: ImageEnhance.Brightness(im).enhance(factor))
    assert (aug.blend(torch.zeros_like(x), x, factor) - expected).abs().max() <= 1.5 / 255
    assert torch.allclose(aug.auto_contrast(x), pil_apply(images, ImageOps.autocontrast), atol=1.01 / 255)


def test_color_is_identity_on_gray_images_and_magnitude_maps_like_the_reference():
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(aug.color(x, 15.0), x)
    assert aug.enhance_factor(10) == pytest.approx(1.9) and aug.enhance_factor(0) == pytest.approx(0.1)
    # the reference's quirk: at M >= 10 the solarize threshold is 256, so nothing is inverted
    assert torch.equal(aug.solarize(x, 10.0), x)


def test_geometric_operations_on_hand_made_images():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) / 50
    # translation by whole pixels: a shifted image, the uncovered columns gray
    moved = aug.translate_pixels(x, torch.tensor([2.0, -1.0]), 0.0)
    assert torch.equal(moved[0, :, :, :3], x[0, :, :, 2:]) and torch.all(moved[0, :, :, 3:] == aug.FILL)
    assert torch.equal(moved[1, :, :, 1:], x[1, :, :, :4]) and torch.all(moved[1, :, :, 0] == aug.FILL)
    # a quarter turn about the centre of a square image is rot90
    assert torch.equal(aug.rotate_degrees(x, torch.tensor([90.0, 90.0])), torch.rot90(x, 1, dims=(-2, -1)))
    draws = aug.Draws(torch.ones(2), torch.zeros(2, 2))
    for op in (aug.shear_x, aug.shear_y, aug.translate_x, aug.rotate):
        assert torch.equal(op(x, 0.0, draws), x), f"{op.__name__} at magnitude 0 is the identity"
    # shear_x by s: row y samples x + s * y
    sheared = aug.warp(x, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3))
    assert torch.equal(sheared[0, 0, 2, :3], x[0, 0, 2, 2:])


def test_cutout_grays_a_square_clipped_at_the_border():
    x = torch.zeros(2, 1, 10, 10)
    out = aug.cutout_square(x, torch.tensor([[5, 5], [0, 9]]), half=2)
    assert (out[0] == aug.FILL).sum() == 4 * 4       # rows 3..6 x columns 3..6
    assert (out[1] == aug.FILL).sum() == 2 * 3       # rows 0..1 x columns 7..9


def test_rand_augment_is_a_function_of_the_generator_and_stays_in_range():
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = aug.rand_augment(x, 2, 15.0, torch.Generator().manual_seed(5))
    b = aug.rand_augment(x, 2, 15.0, torch.Generator().manual_seed(5))
    c = aug.rand_augment(x, 2, 15.0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(aug.rand_augment(x, 0, 15.0, torch.Generator()), x)
    # with 64 images and 2 rounds most images change (invert alone changes every pixel)
    changed = (a != x).flatten(1).any(1).float().mean()
    assert changed > 0.7
    with pytest.raises(VitsamError, match="layers"):
        aug.rand_augment(x, -1, 10.0, torch.Generator())


def test_every_operation_keeps_shape_and_range():
    x = torch.rand(4, 3, 9, 9)
    draws = aug.Draws(torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.rand(4, 2))
    for name, op in aug.OPERATIONS.items():
        out = op(x, 15.0, draws)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name
    assert len(aug.OPERATIONS) == 16


def test_mixup_targets_sum_to_one_and_match_the_images():
    x = torch.rand(8, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    images, targets = aug.mixup(x, labels, 4, 0.5, torch.Generator().manual_seed(3))
    assert torch.allclose(targets.sum(1), torch.ones(8))
    lam = targets[0, 0].item()                       # image 0 (class 0) mixed with image 7 (class 3)
    assert 0.5 <= lam <= 1 and targets[0, 3].item() == pytest.approx(1 - lam, abs=1e-6)
    assert torch.allclose(images, lam * x + (1 - lam) * x.roll(1, 0))
    again = aug.mixup(x, labels, 4, 0.5, torch.Generator().manual_seed(3))[1]
    assert torch.equal(targets, again)
    lams = [aug.beta_weight(0.5, torch.Generator().manual_seed(s)) for s in range(200)]
    # max(lam, 1 - lam) of Beta(0.5, 0.5): mean 1/2 + 1/pi
    assert np.mean(lams) == pytest.approx(0.5 + 1 / np.pi, abs=0.03)


def test_strong_augment_from_config():
    assert aug.StrongAugment.from_config(AugmentConfig(), 10) is None
    strong = aug.StrongAugment.from_config(AugmentConfig(randaugment_layers=2, mixup_alpha=0.5), 10)
    images, targets = strong(torch.rand(6, 1, 8, 8), torch.arange(6), torch.Generator().manual_seed(0))
    assert targets.shape == (6, 10) and images.shape == (6, 1, 8, 8)
    only_ra = aug.StrongAugment(2, 9.0, 0.0, 10)
    labels = torch.arange(6)
    assert only_ra(torch.rand(6, 1, 8, 8), labels, torch.Generator())[1] is labels
    with pytest.raises(VitsamError, match="mixup_alpha"):
        aug.StrongAugment(2, 9.0, -1.0, 10)
