"""The reference side of vitsam's corruption checks; runs in the imagecorruptions environment.

imagecorruptions 1.1.2 (bethgelab, the ImageNet-C code packaged) needs numpy < 2 and an
old scikit-image, so it lives in its own virtual environment and vitsam's scripts call
this file there as a child process (it imports nothing from vitsam). Setup (Python 3.11):

    python3 -m venv /tmp/icvenv
    /tmp/icvenv/bin/pip install "numpy<2" "scipy<1.14" "scikit-image>=0.20,<0.21" \\
        opencv-python-headless imagecorruptions setuptools numba

scikit-image 0.20 dropped ``gaussian(multichannel=True)``, which the package calls
(glass_blur, gaussian_blur): ``_patch_gaussian`` maps it to ``channel_axis=-1``, its
meaning; nothing else is changed.

Where imagecorruptions departs from the original ImageNet-C generation code
(hendrycks/robustness, ``ImageNet-C/create_c/make_imagenet_c.py``), vitsam follows the
original and so does this file's ``reference(name)``:

- elastic_transform: the original's random affine warp then smooth displacement
  (imagecorruptions replaced it by a milder, resolution-independent warp);
- pixelate: PIL BOX down and BOX up (imagecorruptions upsamples with NEAREST);
- frost: a crop of the photograph at its own resolution (imagecorruptions first enlarges
  every photograph by 1.1 with bicubic interpolation).

Subcommands:

    fixtures OUT.npz          the stored reference data of tests/test_corruptions.py
    corrupt IMAGES.npy NAME OUT.npy [--package]
                              severities 1..5 of one corruption on uint8 (N, H, W, 3) images
    time IMAGES.npy OUT.json [--repeats R] [--clock cpu|wall] NAME...
                              seconds per image of imagecorruptions.corrupt, per repeat
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

# corruptions whose output is a function of the image alone (compared image to image)
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate")
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "spatter", "elastic_transform")
# draws per stored image for the random statistics: more where one draw decides much of the
# change (which frost photograph, the fog fractal, the elastic affine jitter); glass blur's
# reference loop takes seconds per image
DRAWS = {"glass_blur": 1, "frost": 8, "fog": 4, "elastic_transform": 4, "motion_blur": 4, "snow": 4, "spatter": 4}


def _patch_gaussian():
    from skimage import filters
    import imagecorruptions.corruptions as ic

    def gaussian(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return filters.gaussian(image, sigma=sigma, **kwargs)

    ic.gaussian = gaussian
    return ic


# --------------------------------------------------------------------------- the original ImageNet-C's versions

def original_pixelate(image, severity):
    from PIL import Image

    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    width, height = image.size
    small = image.resize((int(width * c), int(height * c)), Image.BOX)
    return np.asarray(small.resize((width, height), Image.BOX), dtype=np.float64)


def original_elastic_transform(image, severity):
    """make_imagenet_c.py's elastic transform (its table is written for 224 px)."""
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    amplitude, sigma, jitter = [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                                (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                                (244 * 0.12, 244 * 0.01, 244 * 0.02)][severity - 1]
    image = np.asarray(image, dtype=np.float32) / 255.
    height, width = image.shape[:2]
    centre = np.float32((height, width)) // 2
    side = min(height, width) // 3
    anchors = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    moved = anchors + np.random.uniform(-jitter, jitter, size=anchors.shape).astype(np.float32)
    warp = cv2.getAffineTransform(anchors, moved)
    image = cv2.warpAffine(image, warp, (width, height), borderMode=cv2.BORDER_REFLECT_101)
    fields = [(gaussian(np.random.uniform(-1, 1, size=(height, width)), sigma, mode="reflect", truncate=3)
               * amplitude).astype(np.float32) for _ in range(2)]
    dx, dy = (f[..., None] for f in fields)
    xs, ys, zs = np.meshgrid(np.arange(width), np.arange(height), np.arange(3))
    coords = (ys + dy).reshape(-1, 1), (xs + dx).reshape(-1, 1), zs.reshape(-1, 1)
    warped = map_coordinates(image, coords, order=1, mode="reflect").reshape(image.shape)
    return np.clip(warped, 0, 1) * 255


def frost_dir():
    import imagecorruptions

    return os.path.join(os.path.dirname(imagecorruptions.__file__), "frost")


def original_frost(image, severity):
    """make_imagenet_c.py's frost: one of the first five photographs (randint(5)), cropped
    at random at its own resolution."""
    import cv2

    image_weight, frost_weight = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    photo = cv2.imread(os.path.join(frost_dir(), names[np.random.randint(5)]))
    image = np.asarray(image)
    height, width = image.shape[:2]
    top, left = np.random.randint(0, photo.shape[0] - height), np.random.randint(0, photo.shape[1] - width)
    crop = photo[top:top + height, left:left + width][..., ::-1]        # BGR -> RGB
    return np.clip(image_weight * image + frost_weight * crop, 0, 255)


def reference(name):
    """The function of (PIL image, severity) -> array in [0, 255] that vitsam follows."""
    originals = {"pixelate": original_pixelate, "elastic_transform": original_elastic_transform,
                 "frost": original_frost}
    if name in originals:
        return originals[name]
    function = getattr(_patch_gaussian(), name)
    return lambda image, severity: np.asarray(function(image, severity), dtype=np.float64)


# --------------------------------------------------------------------------- stored data

def synthetic_images(count, height, width, seed):
    """Smooth colour fields with hard-edged rectangles, uint8 (N, H, W, 3): blurs, warps
    and JPEG all have edges and gradients to act on."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.random((4, 5, 3))
        rows = np.linspace(0, 3, height)
        cols = np.linspace(0, 4, width)
        r0, c0 = np.minimum(rows.astype(int), 2), np.minimum(cols.astype(int), 3)
        fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
        smooth = ((1 - fr) * (1 - fc) * coarse[r0][:, c0] + (1 - fr) * fc * coarse[r0][:, c0 + 1]
                  + fr * (1 - fc) * coarse[r0 + 1][:, c0] + fr * fc * coarse[r0 + 1][:, c0 + 1])
        image = 0.15 + 0.6 * smooth
        for _ in range(3):
            top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
            image[top:top + rng.integers(3, height // 2), left:left + rng.integers(3, width // 2)] = rng.random(3)
        out.append(np.round(image * 255).clip(0, 255).astype(np.uint8))
    return np.stack(out)


def upsample4(images):
    """The statistics images: each stored 56 px image repeated 4x along both axes (224 px)."""
    return images.repeat(4, axis=1).repeat(4, axis=2)


def fixtures(out_path):
    from PIL import Image

    warnings.simplefilter("ignore")
    data = {}
    small = synthetic_images(1, 32, 40, seed=0)[0]                    # the reference needs >= 32 px
    data["deterministic_image"] = small
    for name in DETERMINISTIC:
        outputs = [reference(name)(Image.fromarray(small), s) for s in range(1, 6)]
        # fixed point, 1/256 of a level: exact for 8-bit outputs, 6e-5 of the range otherwise
        data[f"deterministic/{name}"] = np.round(np.stack(outputs) * 256).astype(np.uint16)
    base = synthetic_images(4, 56, 56, seed=1)
    data["stat_images"] = base
    images = upsample4(base)
    np.random.seed(0)
    for name in RANDOM:
        function = reference(name)
        stats = np.zeros((5, 3, len(images) * DRAWS.get(name, 2)))         # severity, statistic, draw
        for severity in range(1, 6):
            draw = 0
            for image in images:
                clean = image.astype(np.float64) / 255
                for _ in range(DRAWS.get(name, 2)):
                    out = np.clip(function(Image.fromarray(image), severity), 0, 255) / 255
                    stats[severity - 1, :, draw] = change_statistics(clean, out)
                    draw += 1
        data[f"random/{name}"] = stats.astype(np.float32)
        print(name, np.round(stats[:, 0].mean(1), 4), flush=True)
    data.update(given_draws(small))
    np.savez_compressed(out_path, **data)


def given_draws(image):
    """Random corruptions made deterministic by fixing their draws: the original elastic
    transform with recorded uniforms (severities 1 and 3), imagecorruptions' motion blur
    at given angles, and the diamond-square fractal with recorded uniforms."""
    from PIL import Image

    ic = _patch_gaussian()
    data = {}
    for severity in (1, 3):
        with recorded_uniforms() as draws:
            out = original_elastic_transform(Image.fromarray(image), severity)
        data[f"draws/elastic_{severity}/uniforms"] = np.concatenate([d.ravel() for d in draws]).astype(np.float64)
        data[f"draws/elastic_{severity}/out"] = np.round(out * 256).astype(np.uint16)
    angles = np.array([-45.0, -17.3, 0.0, 30.2, 44.9])
    data["draws/motion/angles"] = angles
    data["draws/motion/out"] = np.stack([np.round(np.clip(ic._motion_blur(image, 15, 8, a), 0, 255) * 256)
                                         .astype(np.uint16) for a in angles])
    with recorded_uniforms() as draws:
        fractal = ic.plasma_fractal(mapsize=32, wibbledecay=1.7)
    data["draws/plasma/uniforms"] = np.concatenate([d.ravel() for d in draws])
    data["draws/plasma/out"] = fractal
    return data


class recorded_uniforms:
    """Within the block, np.random.uniform's results are kept, in call order."""

    def __enter__(self):
        self.original, self.draws = np.random.uniform, []

        def uniform(*args, **kwargs):
            self.draws.append(np.asarray(self.original(*args, **kwargs)))
            return self.draws[-1]
        np.random.uniform = uniform
        return self.draws

    def __exit__(self, *exc):
        np.random.uniform = self.original


def change_statistics(clean, corrupted):
    """mean |corrupted - clean|, the corrupted image's standard deviation, its mean."""
    return np.abs(corrupted - clean).mean(), corrupted.std(), corrupted.mean()


# --------------------------------------------------------------------------- fidelity table and timing

def corrupt_all(images_path, name, out_path, package=False):
    """Severities 1..5 of ``name`` on every image: vitsam's reference (``reference``), or
    with ``package`` imagecorruptions' own function even where it departs from the original."""
    from PIL import Image

    warnings.simplefilter("ignore")
    images = np.load(images_path)
    np.random.seed(0)
    if package:
        own = getattr(_patch_gaussian(), name)
        function = lambda image, severity: np.asarray(own(image, severity), dtype=np.float64)  # noqa: E731
    else:
        function = reference(name)
    outputs = [[function(Image.fromarray(image), s) for image in images] for s in range(1, 6)]
    np.save(out_path, (np.clip(np.stack(outputs), 0, 255) / 255).astype(np.float32))   # (5, N, H, W, 3)


def time_all(images_path, out_path, repeats, names, clock="cpu"):
    """Seconds per image of the package's public ``corrupt`` (uint8 in, uint8 out), every
    severity once per image, after one warm-up call; glass blur on one image only (its
    Python loop takes seconds per image). ``clock``: "cpu" (this process's CPU time) or
    "wall"."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    import cv2

    cv2.setNumThreads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.simplefilter("ignore")
    _patch_gaussian()
    from imagecorruptions import corrupt

    images = np.load(images_path)
    np.random.seed(0)
    result = {}
    for name in names:
        subset = images[:1] if name == "glass_blur" else images
        corrupt(subset[0], 1, name)
        seconds = []
        for _ in range(repeats):
            start = timer()
            for image in subset:
                for severity in range(1, 6):
                    corrupt(image, severity, name)
            seconds.append((timer() - start) / (5 * len(subset)))
        result[name] = seconds
    with open(out_path, "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fixtures").add_argument("out")
    corrupt = commands.add_parser("corrupt")
    for arg in ("images", "name", "out"):
        corrupt.add_argument(arg)
    corrupt.add_argument("--package", action="store_true", help="imagecorruptions' own function, not the original's")
    timing = commands.add_parser("time")
    timing.add_argument("images")
    timing.add_argument("out")
    timing.add_argument("--repeats", type=int, default=3)
    timing.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    timing.add_argument("names", nargs="+")
    args = parser.parse_args()
    if args.command == "fixtures":
        fixtures(args.out)
    elif args.command == "corrupt":
        corrupt_all(args.images, args.name, args.out, args.package)
    else:
        time_all(args.images, args.out, args.repeats, args.names, args.clock)


if __name__ == "__main__":
    sys.exit(main())
