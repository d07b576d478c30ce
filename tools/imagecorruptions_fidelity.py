"""How close vitsam's corruptions are to the reference package, imagecorruptions 1.1.2.

imagecorruptions no longer runs on current numpy / scikit-image, so it runs in its
own virtual environment, in a child process of this script; both sides corrupt the
same 224 px RGB images (upsampled, tinted Fashion-MNIST test images) with the
ImageNet-C parameters and this script compares them, per corruption and severity:

- deterministic corruptions: mean absolute difference of the images, in [0, 1] units;
- random ones (the random streams differ): the mean absolute change from the clean
  image |corrupted - clean| for each side, and the difference of the corrupted
  images' standard deviations;
- throughput: images per second, ours (one batch, torch) over theirs (one image at a
  time, numpy/OpenCV), same images, after a warm-up call.

Setup of the reference environment (what worked, Python 3.11, November 2026):

    python3 -m venv /tmp/icvenv
    /tmp/icvenv/bin/pip install "numpy<2" "scipy<1.14" "scikit-image>=0.20,<0.21" \\
        opencv-python-headless imagecorruptions setuptools numba

scikit-image 0.20 dropped ``gaussian(multichannel=True)``, which imagecorruptions calls
(glass_blur, gaussian_blur): the child process maps it to ``channel_axis=-1``, which is
what it meant; nothing else is changed.

Usage (from the repository root, in vitsam's environment):

    python tools/imagecorruptions_fidelity.py --reference-python /tmp/icvenv/bin/python [--images 8]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


# --------------------------------------------------------------------------- reference side (child process)

def run_reference(images_path: str, name: str, out_path: str) -> None:
    """In the imagecorruptions environment: corrupt every image at severities 1..5."""
    import warnings

    from PIL import Image
    from skimage import filters
    import imagecorruptions.corruptions as ic

    warnings.simplefilter("ignore")

    def gaussian(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return filters.gaussian(image, sigma=sigma, **kwargs)

    ic.gaussian = gaussian
    images = np.load(images_path)
    function = getattr(ic, name)
    np.random.seed(0)
    function(Image.fromarray(images[0]), 1)                 # warm-up (numba compiles glass blur)
    outputs, seconds = [], 0.0
    for severity in range(1, 6):
        start = time.perf_counter()
        batch = [np.asarray(function(Image.fromarray(image), severity), dtype=np.float32) / 255 for image in images]
        seconds += time.perf_counter() - start
        outputs.append(np.stack(batch))
    np.save(out_path, np.stack(outputs).astype(np.float16))   # (5, N, H, W, 3)
    Path(out_path + ".json").write_text(json.dumps({"seconds": seconds}))


# --------------------------------------------------------------------------- our side

def test_images(count: int, size: int = 224) -> np.ndarray:
    """Fashion-MNIST test images, upsampled bicubically and tinted: uint8 (N, H, W, 3)."""
    import torch
    import torch.nn.functional as F

    from vitsam.data import load_source

    source = load_source("fashion_mnist", "test")
    grey = source.images[:count].float() / 255                       # (N, 1, 28, 28)
    big = F.interpolate(grey, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    tints = torch.rand(count, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.4
    background = torch.rand(count, 3, 1, 1, generator=torch.Generator().manual_seed(1)) * 0.3
    colour = background + (tints - background) * big
    return (colour.permute(0, 2, 3, 1) * 255).round().byte().numpy()


def ours(images: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    import torch

    from vitsam.robustness.corruptions import corrupt

    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    corrupt(batch[:1], name, 1, torch.Generator().manual_seed(0), params="imagenet")     # warm-up
    outputs, seconds = [], 0.0
    for severity in range(1, 6):
        start = time.perf_counter()
        out = corrupt(batch, name, severity, torch.Generator().manual_seed(severity), params="imagenet")
        seconds += time.perf_counter() - start
        outputs.append(out.permute(0, 2, 3, 1).numpy())
    return np.stack(outputs), seconds


def compare(name: str, clean: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> list[dict]:
    rows = []
    for s in range(5):
        a, b = mine[s].astype(np.float64), theirs[s].astype(np.float64)
        row = {"corruption": name, "severity": s + 1,
               "change_ours": float(np.abs(a - clean).mean()), "change_theirs": float(np.abs(b - clean).mean()),
               "std_diff": float(a.std() - b.std())}
        if name in DETERMINISTIC:
            row["mad"] = float(np.abs(a - b).mean())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default="/tmp/icvenv/bin/python")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for our side")
    parser.add_argument("--corruptions", nargs="*", default=None)
    parser.add_argument("--reference", nargs=3, metavar=("IMAGES", "NAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        run_reference(*args.reference)
        return

    import torch

    from vitsam.robustness.corruptions import ALL_CORRUPTIONS

    torch.set_num_threads(args.threads)
    names = args.corruptions or list(ALL_CORRUPTIONS)
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    images = test_images(args.images)
    np.save(work / "images.npy", images)
    clean = images.astype(np.float64) / 255
    print(f"{args.images} images, 224 px RGB, ImageNet-C parameters; torch threads {args.threads}\n")
    print("| corruption | sev | MAD ours vs theirs | change ours | change theirs | std ours - theirs |")
    print("|---|---|---|---|---|---|")
    speed = []
    for name in names:
        out = str(work / f"{name}.npy")
        subprocess.run([args.reference_python, __file__, "--reference", str(work / "images.npy"), name, out],
                       check=True)
        theirs = np.load(out).astype(np.float32)
        their_seconds = json.loads(Path(out + ".json").read_text())["seconds"]
        mine, my_seconds = ours(images, name)
        for row in compare(name, clean, mine, theirs):
            mad = f"{row['mad']:.4f}" if "mad" in row else "(random)"
            print(f"| {name} | {row['severity']} | {mad} | {row['change_ours']:.4f} | {row['change_theirs']:.4f} "
                  f"| {row['std_diff']:+.4f} |")
        n = 5 * args.images
        speed.append((name, n / my_seconds, n / their_seconds))
        Path(out).unlink()
    print("\n| corruption | ours img/s | theirs img/s | ours / theirs |")
    print("|---|---|---|---|")
    for name, mine, theirs in speed:
        print(f"| {name} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
