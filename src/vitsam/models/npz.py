"""The authors' ``.npz`` checkpoints for ViT and MLP-Mixer: import and export.

The paper's released weights (gs://vit_models/sam/, linked from
google-research/vision_transformer) are ``np.savez`` archives of the flax parameter
tree, keys joined by ``/``. Layout read from that repository at commit
c6de1e5378c9831a8477feb30994971bdc409e46: ``vit_jax/models_vit.py`` and
``vit_jax/models_mixer.py`` (module names and parameter shapes), ``vit_jax/checkpoint.py``
(``load``: ``np.load(allow_pickle=False)``, ``recover_tree`` on ``/``, then flax's
``convert_pre_linen``; ``load_pretrained``: head reset, representation layer dropped,
position embeddings resized). Checked by running that code (tools/authors_flax_reference.py).

ViT (``D`` width, ``H`` heads, ``d = D / H``, ``P`` patch size, ``C`` channels)::

    embedding/kernel (P, P, C, D) HWIO, embedding/bias (D,)
    cls (1, 1, D)                                   [classifier "token" only]
    Transformer/posembed_input/pos_embedding (1, prefix + N, D)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias} (D,)
        .../MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, H, d), bias (H, d)
        .../MultiHeadDotProductAttention_1/out/kernel (H, d, D), bias (D,)
        .../LayerNorm_2/{scale,bias}, .../MlpBlock_3/Dense_{0,1}/{kernel (in, out), bias}
    Transformer/encoder_norm/{scale,bias}
    pre_logits/{kernel,bias}                        [representation_size only]
    head/kernel (D, K), head/bias (K,)

The block's children carry pre-linen names (one counter per parent, as in the released
files and timm's ``_load_weights``); files saved by today's linen code name them
``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0`` and are read too.

Mixer: ``stem/{kernel,bias}``; ``MixerBlock_{i}/LayerNorm_0``, ``token_mixing/Dense_{0,1}``
(kernel (N, tokens_mlp) then (tokens_mlp, N)), ``LayerNorm_1``, ``channel_mixing/Dense_{0,1}``;
``pre_head_layer_norm``; ``head``.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from vitsam.errors import VitsamError
from vitsam.models.base import VisionModel
from vitsam.models.mixer import MlpMixer
from vitsam.models.vit import VisionTransformer, resize_pos_embed

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
# Linen names of a ViT block's children -> the released files' pre-linen names.
RELEASED_BLOCK_NAMES = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                        "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
PREFIXES = ("opt/target/",)  # whole-optimizer checkpoints keep the parameters under this prefix


@dataclass(frozen=True)
class Link:
    """One array of the authors' file <-> (a part of) one tensor of our state dict.

    kind: "plain" (same values, reshaped), "dense" (flax kernels are (in, out), torch
    weights (out, in)), "conv" (HWIO <-> OIHW). part: which third of the fused qkv
    tensor (0 query, 1 key, 2 value). shape: the file's shape when it splits heads."""
    key: str
    param: str
    kind: str = "plain"
    part: int | None = None
    shape: tuple[int, ...] | None = None

    def file_shape(self, ours: torch.Size) -> tuple[int, ...]:
        if self.shape:
            return self.shape
        if self.kind == "dense":
            return tuple(reversed(ours))
        if self.kind == "conv":
            out_c, in_c, kh, kw = ours
            return (kh, kw, in_c, out_c)
        return tuple(ours)

    def to_file(self, tensor: torch.Tensor) -> np.ndarray:
        shape = self.file_shape(tensor.shape)
        if self.kind == "dense":
            tensor = tensor.T
        elif self.kind == "conv":
            tensor = tensor.permute(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        return tensor.detach().cpu().float().numpy().reshape(shape)  # (in, H*d) -> (in, H, d) etc.

    def to_ours(self, array: np.ndarray, ours: torch.Size) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if self.kind == "dense":  # (in, ...) -> (in, out) -> (out, in); heads merge in the reshape
            return tensor.reshape(ours[1], ours[0]).T
        if self.kind == "conv":
            return tensor.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        return tensor.reshape(ours)


def _dense(key: str, param: str) -> list[Link]:
    return [Link(f"{key}/kernel", f"{param}.weight", "dense"), Link(f"{key}/bias", f"{param}.bias")]


def _norm(key: str, param: str) -> list[Link]:
    return [Link(f"{key}/scale", f"{param}.weight"), Link(f"{key}/bias", f"{param}.bias")]


def vit_links(model: VisionTransformer) -> list[Link]:
    width = model.pos_embed.shape[-1]
    heads = model.blocks[0].attn.num_heads if len(model.blocks) else 1
    head_dim = width // heads
    links = [Link("embedding/kernel", "patch_embed.weight", "conv"), Link("embedding/bias", "patch_embed.bias")]
    if model.cls_token is not None:
        links.append(Link("cls", "cls_token"))
    links.append(Link("Transformer/posembed_input/pos_embedding", "pos_embed"))
    for i in range(len(model.blocks)):
        key, ours = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        mha = f"{key}/MultiHeadDotProductAttention_1"
        links += _norm(f"{key}/LayerNorm_0", f"{ours}.norm1")
        for part, name in enumerate(("query", "key", "value")):  # torch fuses them as rows of qkv
            links += [Link(f"{mha}/{name}/kernel", f"{ours}.attn.qkv.weight", "dense", part,
                           (width, heads, head_dim)),
                      Link(f"{mha}/{name}/bias", f"{ours}.attn.qkv.bias", "plain", part, (heads, head_dim))]
        links += [Link(f"{mha}/out/kernel", f"{ours}.attn.proj.weight", "dense", shape=(heads, head_dim, width)),
                  Link(f"{mha}/out/bias", f"{ours}.attn.proj.bias")]
        links += _norm(f"{key}/LayerNorm_2", f"{ours}.norm2")
        links += _dense(f"{key}/MlpBlock_3/Dense_0", f"{ours}.mlp.fc1")
        links += _dense(f"{key}/MlpBlock_3/Dense_1", f"{ours}.mlp.fc2")
    links += _norm("Transformer/encoder_norm", "norm")
    if isinstance(model.pre_logits, torch.nn.Sequential):
        links += _dense("pre_logits", "pre_logits.0")
    return links + _dense("head", "head")


def mixer_links(model: MlpMixer) -> list[Link]:
    links = [Link("stem/kernel", "patch_embed.weight", "conv"), Link("stem/bias", "patch_embed.bias")]
    for i in range(len(model.blocks)):
        key, ours = f"MixerBlock_{i}", f"blocks.{i}"
        links += _norm(f"{key}/LayerNorm_0", f"{ours}.norm1")
        links += _dense(f"{key}/token_mixing/Dense_0", f"{ours}.token_mixing.fc1")
        links += _dense(f"{key}/token_mixing/Dense_1", f"{ours}.token_mixing.fc2")
        links += _norm(f"{key}/LayerNorm_1", f"{ours}.norm2")
        links += _dense(f"{key}/channel_mixing/Dense_0", f"{ours}.channel_mixing.fc1")
        links += _dense(f"{key}/channel_mixing/Dense_1", f"{ours}.channel_mixing.fc2")
    return links + _norm("pre_head_layer_norm", "norm") + _dense("head", "head")


def links_for(model: VisionModel) -> list[Link]:
    if isinstance(model, VisionTransformer):
        return vit_links(model)
    if isinstance(model, MlpMixer):
        return mixer_links(model)
    raise VitsamError(f"the authors' .npz layout covers ViT and MLP-Mixer, not {type(model).__name__}; "
                      f"use safetensors for this model")


def _part(tensor: torch.Tensor, part: int | None) -> torch.Tensor:
    return tensor if part is None else tensor.chunk(3)[part]  # a view: rows of the fused qkv


# --------------------------------------------------------------------------- export

def to_authors(model: VisionModel) -> dict[str, np.ndarray]:
    """Our weights as the authors' arrays, keyed as in their released files."""
    state = model.state_dict()
    return {link.key: link.to_file(_part(state[link.param], link.part)) for link in links_for(model)}


def save_npz(model: VisionModel, path: str | Path) -> Path:
    """Write ``to_authors(model)`` with ``np.savez`` (what the authors' loader reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **to_authors(model))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- reading a file

def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` file, read without unpickling; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise VitsamError(f"no file at {str(path)!r}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in ZIP_MAGIC:
        raise VitsamError(f"{str(path)!r} is not a .npz archive (np.savez writes a zip file; this file "
                          f"starts with {magic!r})")
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                arrays[key] = archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):  # numpy's own message suggests unpickling: never pass it on
            raise VitsamError(f"{str(path)!r}: array {key!r} holds Python objects, not numbers; only "
                              f"numeric arrays are read") from None
        raise VitsamError(f"{str(path)!r} is truncated or corrupt (array {key!r}: {err})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        where = f" (reading array {key!r})" if key else ""
        raise VitsamError(f"{str(path)!r} is truncated or corrupt{where}: {type(err).__name__}: {err}") from None
    for key, array in arrays.items():
        if array.dtype.kind != "f":
            raise VitsamError(f"{str(path)!r}: array {key!r} has dtype {array.dtype}, not floating point")
    return released_names(arrays)


def released_names(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip a whole-optimizer prefix and rename linen-numbered ViT block children to the
    released files' pre-linen names (what flax's ``convert_pre_linen`` undoes)."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in arrays):
            arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if not any("/MlpBlock_0/" in k for k in arrays):
        return dict(arrays)
    block_child = re.compile(r"^(Transformer/encoderblock_\d+/)([^/]+)(/.*)$")

    def rename(key: str) -> str:
        match = block_child.match(key)
        if not match:
            return key
        start, child, rest = match.groups()
        return start + RELEASED_BLOCK_NAMES.get(child, child) + rest

    return {rename(k): v for k, v in arrays.items()}


# --------------------------------------------------------------------------- import

def load_authors(model: VisionModel, arrays: Mapping[str, np.ndarray], source: str = "the file") -> list[str]:
    """Copy the authors' arrays (keys as ``read_npz`` returns them) into ``model``.

    Position embeddings of another patch grid are resized (``resize_pos_embed``); a head
    of another class count, and a representation layer the model does not have, are
    left out (the model keeps its own, freshly initialized head), as the authors'
    ``load_pretrained`` does for fine-tuning. Returns one note per such change; any other
    difference (a missing key, a shape, an extra key) raises one VitsamError naming the
    key and the shape the model expects."""
    links = links_for(model)
    name = type(model).__name__
    notes = _check_keys(model, links, arrays, source)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    head_dropped = _head_dropped(arrays, state)
    if head_dropped:
        notes.append(f"head of {arrays['head/bias'].shape[-1]} classes left out; the model's new head "
                     f"has {model.num_classes} classes")
    for link in links:
        if head_dropped and link.key.startswith("head/"):
            continue
        target = _part(state[link.param], link.part)
        expected = link.file_shape(target.shape)
        if link.key not in arrays:
            raise VitsamError(f"{source} has no array {link.key!r} (expected shape {expected} for this "
                              f"{name})")
        array = arrays[link.key]
        if link.param == "pos_embed" and array.shape != expected and array.shape[-1:] == expected[-1:]:
            array, note = _resized_pos_embed(array, model, source)
            notes.append(note)
        if array.shape != expected:
            raise VitsamError(_shape_error(link, array.shape, expected, name, source))
        target.copy_(link.to_ours(array, target.shape))
    model.load_state_dict(state)
    return notes


def _check_keys(model: VisionModel, links: list[Link], arrays: Mapping[str, np.ndarray],
                source: str) -> list[str]:
    """A foreign file or extra arrays raise; a representation layer the model lacks is a note."""
    name, embedding = type(model).__name__, links[0]
    if embedding.key not in arrays:  # every ViT / Mixer file starts with its patch embedding
        found = ", ".join(repr(k) for k in sorted(arrays)[:3]) or "no arrays"
        expected = embedding.file_shape(model.state_dict()[embedding.param].shape)
        raise VitsamError(f"{source} is not the authors' {name} layout: no array {embedding.key!r} (expected "
                          f"shape {expected}); it has {found}")
    extra = sorted(set(arrays) - {link.key for link in links})
    notes = []
    if any(k.startswith("pre_logits/") for k in extra):
        notes.append("representation layer (pre_logits) left out: the model has none (the authors' "
                     "drop-head variant)")
        extra = [k for k in extra if not k.startswith("pre_logits/")]
    if extra:
        raise VitsamError(f"{source} has {len(extra)} array(s) the {name} does not, e.g. {extra[0]!r} "
                          f"(another depth or architecture? check --model)")
    return notes


def _head_dropped(arrays: Mapping[str, np.ndarray], state: dict) -> bool:
    bias = arrays.get("head/bias")
    return bias is not None and bias.shape != tuple(state["head.bias"].shape)


def _resized_pos_embed(array: np.ndarray, model: VisionTransformer, source: str) -> tuple[np.ndarray, str]:
    """The file's position embeddings on the model's patch grid, and the note saying so."""
    grid = model.img_size // model.patch_size
    try:
        resized = resize_pos_embed(torch.from_numpy(array.astype(np.float32)), grid, model.num_prefix_tokens)
    except VitsamError as err:
        raise VitsamError(f"{source}: 'Transformer/posembed_input/pos_embedding': {err}") from None
    old = math.isqrt(array.shape[1] - model.num_prefix_tokens)
    return resized.numpy(), (f"position embeddings resized from a {old}x{old} to a {grid}x{grid} patch "
                             f"grid (bicubic; class token kept)")


def _shape_error(link: Link, found: tuple, expected: tuple, name: str, source: str) -> str:
    if link.param.endswith("token_mixing.fc1.weight") and found[1:] == expected[1:]:
        return (f"{source}: {link.key!r} mixes {found[0]} tokens, the model has {expected[0]}; Mixer's "
                f"token-mixing MLP is sized by the patch count, so import at the file's image size "
                f"(patches of the same size)")
    return (f"{source}: array {link.key!r} has shape {tuple(found)}, this {name} expects {tuple(expected)} "
            f"(another model size or patch size? check --model)")


def infer_options(arrays: Mapping[str, np.ndarray], model_cls: type[VisionModel],
                  num_classes: int | None) -> tuple[dict, dict]:
    """What a released file fixes beyond the model's name: ``(sizes, overrides)``, sizes
    being ``in_chans`` and ``num_classes`` (the file's head unless ``num_classes`` is
    given), overrides the ViT classifier and representation layer where they differ
    from the model's defaults. A file's representation layer is kept only with its head."""
    sizes, options = {}, {}
    kernel = arrays.get("embedding/kernel", arrays.get("stem/kernel"))
    if kernel is not None and kernel.ndim == 4:
        sizes["in_chans"] = int(kernel.shape[2])
    head_bias = arrays.get("head/bias")
    file_classes = int(head_bias.shape[-1]) if head_bias is not None and head_bias.ndim == 1 else None
    if num_classes or file_classes:
        sizes["num_classes"] = num_classes or file_classes
    if issubclass(model_cls, VisionTransformer):
        options["classifier"] = "token" if "cls" in arrays else "gap"
        pre_logits = arrays.get("pre_logits/kernel")
        if pre_logits is not None and pre_logits.ndim == 2 and sizes.get("num_classes") == file_classes:
            options["representation_size"] = int(pre_logits.shape[1])
    defaults = inspect.signature(model_cls.__init__).parameters
    return sizes, {k: v for k, v in options.items() if v != defaults[k].default}


def import_npz(path: str | Path, model_name: str, num_classes: int | None = None,
               img_size: int | None = None, **overrides) -> tuple[VisionModel, dict, list[str]]:
    """Build ``model_name`` for the authors' checkpoint at ``path`` and load it.

    Returns the model (eval mode), its ``create_model`` arguments (model.json's keys:
    name, num_classes, img_size, in_chans, overrides) and the notes of ``load_authors``.
    ``overrides`` are further ``create_model`` keywords (``gelu="exact"``, ``depth``...)."""
    from vitsam.models.registry import create_model, model_class

    model_cls = model_class(model_name)
    if not issubclass(model_cls, (VisionTransformer, MlpMixer)):
        raise VitsamError(f"the authors' .npz layout covers ViT and MLP-Mixer; {model_name!r} is a "
                          f"{model_cls.__name__}")
    arrays = read_npz(path)
    sizes, inferred = infer_options(arrays, model_cls, num_classes)
    overrides = {**inferred, **overrides}
    model = create_model(model_name, img_size=img_size, **sizes, **overrides)
    notes = load_authors(model, arrays, source=repr(str(path)))
    args = {"name": model_name, "num_classes": model.num_classes, "img_size": model.img_size,
            "in_chans": model.in_chans, "overrides": overrides}
    return model.eval(), args, notes
