"""How close vitsam's corruptions are to the reference: imagecorruptions 1.1.2 and the original
ImageNet-C code where the two disagree (tools/corruption_reference.py says where).

The reference runs in its own environment (setup: tools/corruption_reference.py), in a child
process; both sides corrupt the same 224 px RGB images (upsampled, tinted Fashion-MNIST test
images) with the ImageNet-C parameters, and this script prints per corruption and severity:

- deterministic corruptions: mean absolute difference of the images (MAD, [0, 1] units);
- random ones (the random streams differ): the mean absolute change |corrupted - clean| of
  each side and the difference of the corrupted images' standard deviations;
- for elastic_transform, pixelate and frost, where vitsam follows the original ImageNet-C
  code, a second row against imagecorruptions' own version ("package").

Speed is benchmarks/bench_corruptions.py's job. Usage (repository root, vitsam's environment):

    python tools/imagecorruptions_fidelity.py [--reference-python /tmp/icvenv/bin/python] [--images 8]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REFERENCE_SCRIPT = Path(__file__).resolve().parent / "corruption_reference.py"
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}
FOLLOW_THE_ORIGINAL = ("elastic_transform", "pixelate", "frost")


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


def ours(images: np.ndarray, name: str) -> np.ndarray:
    import torch

    from vitsam.robustness.corruptions import corrupt

    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    outputs = [corrupt(batch, name, s, torch.Generator().manual_seed(s), params="imagenet") for s in range(1, 6)]
    return torch.stack(outputs).permute(0, 1, 3, 4, 2).numpy()       # (5, N, H, W, 3)


def theirs(python: str, images_path: Path, name: str, package: bool) -> np.ndarray:
    out = images_path.parent / f"{name}-{package}.npy"
    subprocess.run([python, str(REFERENCE_SCRIPT), "corrupt", str(images_path), name, str(out)]
                   + (["--package"] if package else []), check=True)
    return np.load(out)


def rows(name: str, label: str, clean: np.ndarray, mine: np.ndarray, reference: np.ndarray) -> list[str]:
    lines = []
    for s in range(5):
        a, b = mine[s].astype(np.float64), reference[s].astype(np.float64)
        mad = f"{np.abs(a - b).mean():.1e}" if name in DETERMINISTIC else "(random)"
        lines.append(f"| {label} | {s + 1} | {mad} | {np.abs(a - clean).mean():.4f} | {np.abs(b - clean).mean():.4f} "
                     f"| {a.std() - b.std():+.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default="/tmp/icvenv/bin/python")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--corruptions", nargs="*", default=None)
    args = parser.parse_args()

    import torch

    from vitsam.robustness.corruptions import ALL_CORRUPTIONS, frost_source

    torch.set_num_threads(1)
    names = args.corruptions or list(ALL_CORRUPTIONS)
    with tempfile.TemporaryDirectory(prefix="fidelity-") as work:
        images_path = Path(work) / "images.npy"
        images = test_images(args.images)
        np.save(images_path, images)
        clean = images.astype(np.float64) / 255
        print(f"{args.images} images, 224 px RGB, ImageNet-C parameters; frost: {frost_source()}\n")
        print("| corruption | sev | MAD ours vs reference | change ours | change reference | std ours - reference |")
        print("|---|---|---|---|---|---|")
        for name in names:
            mine = ours(images, name)
            label = f"{name} (original)" if name in FOLLOW_THE_ORIGINAL else name
            print("\n".join(rows(name, label, clean, mine, theirs(args.reference_python, images_path, name, False))))
            if name in FOLLOW_THE_ORIGINAL:
                package = theirs(args.reference_python, images_path, name, True)
                print("\n".join(rows(name, f"{name} (package)", clean, mine, package)))
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
