"""Make the reference fixtures in tests/data/npz/ by running the authors' own flax code.

    python -m venv /tmp/flaxenv && /tmp/flaxenv/bin/pip install jax jaxlib flax einops \\
        absl-py pandas scipy tqdm packaging
    git clone https://github.com/google-research/vision_transformer /tmp/authors
    /tmp/flaxenv/bin/python tools/authors_flax_reference.py --authors /tmp/authors --out tests/data/npz

Runs in its own environment (JAX/flax, no torch). For a few small random-initialised
configurations of the authors' ``vit_jax.models_vit.VisionTransformer`` and
``vit_jax.models_mixer.MlpMixer`` it writes

- ``<name>.npz``: the parameters in the released checkpoints' layout (for ViT the
  pre-linen module names ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``,
  ``MlpBlock_3`` that the files under gs://vit_models/ carry);
- ``reference.npz``: the fixed input images (B, H, W, C) in [0, 1] and, per
  configuration, the logits the authors' model computes from the parameters that
  the authors' own ``vit_jax.checkpoint.load`` reads back from ``<name>.npz``;
- ``reference.json``: configurations, the authors' commit, library versions.

So the fixtures test both the file layout (their loader must accept our
``<name>.npz``) and the forward pass (their logits). Their code is imported from the
path given, never copied into this repository.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

# Every leaf gets N(0, NOISE^2) added to its flax initialisation: the authors initialise
# the head at zero and biases at ~1e-6, which would hide any mistake in those tensors.
NOISE = 0.1
BATCH, IMG, CHANNELS, CLASSES = 4, 16, 3, 5

CONFIGS = {
    "vit_token": dict(family="vit", patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32,
                      classifier="token", representation_size=None),
    "vit_gap_repr": dict(family="vit", patch_size=4, width=16, depth=2, num_heads=4, mlp_dim=24,
                         classifier="gap", representation_size=12),
    "mixer": dict(family="mixer", patch_size=4, width=16, depth=2, tokens_mlp_dim=8,
                  channels_mlp_dim=32),
}

# Linen numbers submodules per class; the released ViT files were written before linen,
# with one counter per parent module (flax.training.checkpoints.convert_pre_linen).
RELEASED_BLOCK_NAMES = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0":
                        "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
                        "MlpBlock_0": "MlpBlock_3"}


def import_authors_checkpoint():
    """vit_jax.checkpoint reads files through tensorflow.io.gfile; plain open() does the same
    locally. The stand-in lives only while the module imports (einops probes for tensorflow)."""
    tf = types.ModuleType("tensorflow")
    tf.io = types.ModuleType("tensorflow.io")
    tf.io.gfile = types.SimpleNamespace(GFile=open)
    sys.modules.update({"tensorflow": tf, "tensorflow.io": tf.io})
    try:
        from vit_jax import checkpoint
    finally:
        del sys.modules["tensorflow"], sys.modules["tensorflow.io"]
    return checkpoint


def build(cfg: dict, models_vit, models_mixer):
    patches = types.SimpleNamespace(size=(cfg["patch_size"], cfg["patch_size"]))
    if cfg["family"] == "mixer":
        return models_mixer.MlpMixer(patches=patches, num_classes=CLASSES, num_blocks=cfg["depth"],
                                     hidden_dim=cfg["width"], tokens_mlp_dim=cfg["tokens_mlp_dim"],
                                     channels_mlp_dim=cfg["channels_mlp_dim"])
    transformer = dict(num_layers=cfg["depth"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"],
                       dropout_rate=0.0, attention_dropout_rate=0.0)
    return models_vit.VisionTransformer(num_classes=CLASSES, patches=patches, transformer=transformer,
                                        hidden_size=cfg["width"], classifier=cfg["classifier"],
                                        representation_size=cfg["representation_size"])


def released_key(path: tuple[str, ...]) -> str:
    if len(path) > 2 and path[0] == "Transformer" and path[1].startswith("encoderblock_"):
        path = (*path[:2], RELEASED_BLOCK_NAMES[path[2]], *path[3:])
    return "/".join(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", required=True, help="a checkout of google-research/vision_transformer")
    parser.add_argument("--out", default="tests/data/npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import flax
    import flax.training.checkpoints  # noqa: F401  (before the shim: flax probes for tensorflow itself)
    import jax
    from flax import traverse_util

    sys.path.insert(0, str(Path(args.authors).resolve()))
    from vit_jax import models_mixer, models_vit
    checkpoint = import_authors_checkpoint()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    images = rng.random((BATCH, IMG, IMG, CHANNELS), dtype=np.float32)  # NHWC in [0, 1]
    authors_input = images * 2.0 - 1.0  # the authors' input pipeline: (pixels - 127.5) / 127.5
    reference = {"images": images}
    key = jax.random.PRNGKey(args.seed)
    for name, cfg in CONFIGS.items():
        model = build(cfg, models_vit, models_mixer)
        key, init_key = jax.random.split(key)
        params = model.init(init_key, authors_input[:1], train=False)["params"]
        flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
        arrays = {}
        for path, value in flat.items():
            key, noise_key = jax.random.split(key)
            noise = NOISE * jax.random.normal(noise_key, value.shape, value.dtype)
            arrays[released_key(path)] = np.asarray(value + noise, dtype=np.float32)
        np.savez(out / f"{name}.npz", **arrays)
        # The authors' loader reads our file back (pre-linen names -> linen): what their
        # model computes from it is the ground truth our import must reproduce.
        restored = checkpoint.load(str(out / f"{name}.npz"))
        logits = model.apply({"params": restored}, authors_input, train=False)
        reference[f"{name}/logits"] = np.asarray(logits, dtype=np.float32)
        print(f"{name}: {len(arrays)} arrays, logits {tuple(logits.shape)}, |logits| max "
              f"{float(np.abs(logits).max()):.3f}")
    np.savez(out / "reference.npz", **reference)
    commit = subprocess.run(["git", "-C", args.authors, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    meta = {"authors_repository": "google-research/vision_transformer", "authors_commit": commit,
            "jax": jax.__version__, "flax": flax.__version__, "seed": args.seed, "noise": NOISE,
            "images": {"shape_nhwc": list(images.shape), "range": [0, 1],
                       "authors_input": "images * 2 - 1"},
            "num_classes": CLASSES, "img_size": IMG, "in_chans": CHANNELS, "configs": CONFIGS}
    (out / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
