"""Does timm's own loader for the authors' .npz layout read our exported files the same way?

    python tools/compare_timm.py [--seed 0]

For ViT configurations (class token, and mean pooling), a randomly perturbed vitsam model
is exported with ``vitsam.models.npz.save_npz``; ``timm.models.vision_transformer._load_weights``
(timm's loader for google-research/vision_transformer checkpoints) loads that file into
timm's VisionTransformer of the same shape, and both models' logits on the same images
are compared. timm uses the exact (erf) GELU, the authors' flax code the tanh form, so
the exported model is compared with ``gelu="exact"`` (the same function as timm) and
``gelu="tanh"`` (the authors' function: the difference timm users see on these files).
timm has no loader for the authors' Mixer layout; Mixer rests on the flax fixtures
(tests/data/npz, tools/authors_flax_reference.py). Exits 0 with a note when timm does
not import.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from vitsam.models import create_model
from vitsam.models.npz import save_npz

CASES = {  # vitsam model + overrides, timm VisionTransformer keywords of the same network
    "vit_s16 at 64 px, class token": (
        "vit_s16", dict(img_size=64, num_classes=10, depth=3),
        dict(img_size=64, patch_size=16, embed_dim=384, depth=3, num_heads=6, mlp_ratio=4.0,
             num_classes=10, class_token=True, global_pool="token")),
    "vit_b32 at 64 px, mean pooling (gap)": (
        "vit_b32", dict(img_size=64, num_classes=7, depth=2, classifier="gap"),
        dict(img_size=64, patch_size=32, embed_dim=768, depth=2, num_heads=12, mlp_ratio=4.0,
             num_classes=7, class_token=False, global_pool="avg", fc_norm=False)),
}


def perturbed(name: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def compare(case: str, seed: int, workdir: Path) -> None:
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    name, ours_kwargs, timm_kwargs = CASES[case]
    images = torch.rand(4, 3, timm_kwargs["img_size"], timm_kwargs["img_size"],
                        generator=torch.Generator().manual_seed(seed))
    for gelu in ("exact", "tanh"):
        ours = perturbed(name, seed, gelu=gelu, **ours_kwargs)
        path = save_npz(ours, workdir / f"{name}_{gelu}.npz")
        theirs = VisionTransformer(**timm_kwargs).eval()
        with torch.no_grad():
            _load_weights(theirs, str(path))
            ours_logits = ours(images)
            timm_logits = theirs(ours.normalize(images))  # timm models take normalized images
        diff = (ours_logits - timm_logits).abs().max().item()
        scale = ours_logits.abs().max().item()
        print(f"{case}: vitsam gelu={gelu} vs timm (_load_weights of our export): max |diff| "
              f"{diff:.3g} (logits up to {scale:.3g})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import timm
    except Exception as err:  # not installed, or torchvision broken underneath
        print(f"timm does not import here ({type(err).__name__}: {err}); nothing compared")
        return 0
    print(f"timm {timm.__version__}, torch {torch.__version__}")
    torch.set_num_threads(min(4, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            compare(case, args.seed, Path(tmp))
    print("Mixer: timm has no loader for the authors' Mixer layout; see tests/test_npz.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
