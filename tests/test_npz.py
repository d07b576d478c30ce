"""The authors' .npz layout: their own flax code's logits (fixtures made by
tools/authors_flax_reference.py from google-research/vision_transformer), round trips,
position-embedding resizing, dropped heads, bad files."""
from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vitsam.errors import VitsamError
from vitsam.models import create_model
from vitsam.models.npz import import_npz, load_authors, read_npz, save_npz, to_authors
from vitsam.models.vit import resize_pos_embed

from test_models import perturb_

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).parent / "data" / "npz"
META = json.loads((DATA / "reference.json").read_text())
REFERENCE = dict(np.load(DATA / "reference.npz"))
IMAGES = torch.from_numpy(REFERENCE["images"]).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def sizes(name: str) -> dict:
    """A fixture's model sizes (classifier and representation layer come from the file)."""
    skip = ("family", "classifier", "representation_size")
    return {k: v for k, v in META["configs"][name].items() if k not in skip}


def fixture_model(name: str, img_size: int = META["img_size"], **extra):
    """Import a fixture the way a user imports a released file, with its small sizes."""
    model_name = "vit_s16" if META["configs"][name]["family"] == "vit" else "mixer_s16"
    return import_npz(DATA / f"{name}.npz", model_name, img_size=img_size, **{**sizes(name), **extra})


def logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(IMAGES).numpy()


def perturbed(name: str, **kwargs):
    torch.manual_seed(0)
    return perturb_(create_model(name, **kwargs)).eval()


@pytest.mark.parametrize("name", sorted(META["configs"]))
def test_imported_file_gives_the_authors_flax_logits(name):
    model, args, notes = fixture_model(name)
    expected = REFERENCE[f"{name}/logits"]
    assert notes == [] and args["num_classes"] == META["num_classes"] == expected.shape[1]
    np.testing.assert_allclose(logits(model), expected, rtol=1e-5, atol=2e-6)
    # The check can tell GELU forms apart: timm's exact GELU misses the authors' logits.
    exact, _, _ = fixture_model(name, gelu="exact")
    assert np.abs(logits(exact) - expected).max() > 2e-5


def test_the_file_fixes_classifier_and_representation_layer():
    _, args, _ = fixture_model("vit_gap_repr")
    assert args["overrides"]["classifier"] == "gap" and args["overrides"]["representation_size"] == 12
    _, args, _ = fixture_model("vit_token")
    assert "classifier" not in args["overrides"] and "representation_size" not in args["overrides"]


@pytest.mark.parametrize("name", sorted(META["configs"]))
def test_export_writes_the_authors_file_back_bit_for_bit(name):
    model, _, _ = fixture_model(name)
    original = read_npz(DATA / f"{name}.npz")
    exported = to_authors(model)
    assert sorted(exported) == sorted(original)
    for key in original:
        assert exported[key].shape == original[key].shape, key
        assert np.array_equal(exported[key], original[key]), key


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny", {}),
    ("vit_tiny", {"classifier": "gap", "representation_size": 24, "num_heads": 2}),
    ("mixer_tiny", {}),
])
def test_round_trip_ours_npz_ours_gives_identical_logits(tmp_path, name, kwargs):
    model = perturbed(name, **kwargs)
    path = save_npz(model, tmp_path / "exported.npz")
    fresh = create_model(name, **kwargs).eval()
    assert load_authors(fresh, read_npz(path)) == []
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def linen_names(key: str) -> str:
    """What today's flax names a ViT block's children (one counter per class)."""
    for old, new in (("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
                     ("LayerNorm_2", "LayerNorm_1"), ("MlpBlock_3", "MlpBlock_0")):
        key = key.replace(f"/{old}/", f"/{new}/")
    return key


def test_linen_names_and_optimizer_prefix_are_read(tmp_path):
    arrays = read_npz(DATA / "vit_token.npz")
    renamed = {f"opt/target/{linen_names(k)}": v for k, v in arrays.items()}
    assert any("/MlpBlock_0/" in k for k in renamed)
    np.savez(tmp_path / "linen.npz", **renamed, **{"opt/state/step": np.zeros(1, np.float32)})
    model, _, _ = import_npz(tmp_path / "linen.npz", "vit_s16", img_size=16, **sizes("vit_token"))
    np.testing.assert_allclose(logits(model), REFERENCE["vit_token/logits"], rtol=1e-5, atol=2e-6)


def test_resize_pos_embed_interpolates_the_grid_and_keeps_the_class_token():
    """A smooth function of (row, column) sampled at cell centres, resized from a 6x6 to a
    9x9 grid, matches the same function at the new centres; rows and columns stay apart."""
    def sampled(side: int) -> torch.Tensor:
        centres = (torch.arange(side) + 0.5) / side  # cell centres in (0, 1)
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        grid = torch.stack([torch.sin(2 * y), x ** 2 + 0.3 * y, torch.cos(x - y)], dim=-1)  # (g, g, 3)
        return grid.reshape(1, side * side, 3)

    cls = torch.tensor([[[7.0, -7.0, 3.0]]])
    resized = resize_pos_embed(torch.cat([cls, sampled(6)], 1), 9)
    assert resized.shape == (1, 1 + 81, 3) and torch.equal(resized[:, :1], cls)
    inner = torch.zeros(9, 9, dtype=torch.bool)
    inner[1:-1, 1:-1] = True  # the border extrapolates: compare inside it
    error = (resized[0, 1:] - sampled(9)[0]).reshape(9, 9, 3)[inner].abs().max()
    assert error < 0.05, error  # bicubic (a = -0.75) on these smooth functions: 0.03
    swapped = sampled(9)[0].reshape(9, 9, 3).transpose(0, 1)
    assert (resized[0, 1:].reshape(9, 9, 3) - swapped)[inner].abs().max() > 0.3  # 0.7
    same = torch.cat([cls, sampled(6)], 1)
    assert torch.equal(resize_pos_embed(same, 6), same)
    no_prefix = resize_pos_embed(sampled(6), (9, 9), num_prefix_tokens=0)
    torch.testing.assert_close(no_prefix, resized[:, 1:])
    with pytest.raises(VitsamError, match="square patch grid"):
        resize_pos_embed(torch.zeros(1, 1 + 10, 3), 4)


def test_other_image_size_resizes_position_embeddings():
    model, _, _ = fixture_model("vit_token")
    bigger, args, notes = fixture_model("vit_token", img_size=24)
    assert args["img_size"] == 24 and bigger.pos_embed.shape == (1, 1 + 36, 16)
    assert notes == ["position embeddings resized from a 4x4 to a 6x6 patch grid (bicubic; class token kept)"]
    torch.testing.assert_close(bigger.pos_embed[:, :1], model.pos_embed[:, :1], rtol=0, atol=0)
    expected = resize_pos_embed(model.pos_embed.detach(), 6)
    torch.testing.assert_close(bigger.pos_embed.detach(), expected)
    with torch.no_grad():
        assert torch.isfinite(bigger(torch.rand(2, 3, 24, 24))).all()


def test_head_of_another_class_count_is_left_out_with_a_note():
    full, _, _ = fixture_model("vit_gap_repr")
    model, args, notes = fixture_model("vit_gap_repr", num_classes=3)
    assert args["num_classes"] == 3 and "representation_size" not in args["overrides"]
    assert any("head of 5 classes left out" in n for n in notes)
    assert any("pre_logits" in n for n in notes)
    assert model.head.weight.abs().sum() == 0 and model.head.in_features == 16
    torch.testing.assert_close(model.forward_features(model.normalize(IMAGES)),
                               full.forward_features(full.normalize(IMAGES)))


def test_mixer_needs_the_same_token_count():
    with pytest.raises(VitsamError, match="mixes 16 tokens, the model has 36.*image size"):
        fixture_model("mixer", img_size=24)


def write(tmp_path: Path, arrays: dict) -> Path:
    path = tmp_path / "file.npz"
    np.savez(path, **arrays)
    return path


def test_missing_key_names_the_key_and_expected_shape(tmp_path):
    arrays = read_npz(DATA / "vit_token.npz")
    del arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel"]
    with pytest.raises(VitsamError, match=r"no array 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
                                          r"/key/kernel' \(expected shape \(16, 2, 8\)"):
        import_npz(write(tmp_path, arrays), "vit_s16", img_size=16, **sizes("vit_token"))


def test_wrong_shapes_and_wrong_model_are_named(tmp_path):
    arrays = read_npz(DATA / "vit_token.npz")
    arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"] = np.zeros(31, np.float32)
    cfg = dict(sizes("vit_token"), img_size=16)
    with pytest.raises(VitsamError, match=r"'Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias' has shape "
                                          r"\(31,\), this VisionTransformer expects \(32,\)"):
        import_npz(write(tmp_path, arrays), "vit_s16", **cfg)
    with pytest.raises(VitsamError, match=r"'embedding/kernel' has shape \(4, 4, 3, 16\).*\(16, 16, 3, 384\)"
                                          r".*--model"):
        import_npz(DATA / "vit_token.npz", "vit_s16", img_size=32)
    with pytest.raises(VitsamError, match="encoderblock_1.*another depth"):
        import_npz(DATA / "vit_token.npz", "vit_s16", **{**cfg, "depth": 1})
    with pytest.raises(VitsamError, match="not the authors' MlpMixer layout"):
        import_npz(DATA / "vit_token.npz", "mixer_s16", img_size=16, patch_size=4, width=16)
    with pytest.raises(VitsamError, match="ViT and MLP-Mixer.*ResNet"):
        import_npz(DATA / "vit_token.npz", "resnet50")


@pytest.mark.parametrize("content,message", [
    (b"hello, not numpy at all", "not a .npz archive"),
    (pickle.dumps({"embedding/kernel": [1.0]}), "not a .npz archive"),
    (b"", "not a .npz archive"),
])
def test_files_that_are_not_npz_say_so(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(VitsamError, match=message) as err:
        read_npz(path)
    assert "pickle" not in str(err.value)


def test_truncated_object_integer_and_foreign_files(tmp_path):
    data = (DATA / "vit_token.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VitsamError, match="truncated or corrupt"):
        read_npz(truncated)
    with zipfile.ZipFile(tmp_path / "compressed.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cls.npy", b"\x93NUMPY" + b"\x01" * 40)  # a member whose header is garbage
    with pytest.raises(VitsamError, match="truncated or corrupt.*'cls'"):
        read_npz(tmp_path / "compressed.npz")
    objects = tmp_path / "objects.npz"
    np.savez(objects, cls=np.array([{"x": 1}], dtype=object))
    with pytest.raises(VitsamError, match="'cls' holds Python objects") as err:
        read_npz(objects)
    assert "allow_pickle" not in str(err.value)
    with pytest.raises(VitsamError, match="'cls' has dtype int64, not floating point"):
        read_npz(write(tmp_path, {"cls": np.zeros((1, 1, 16), np.int64)}))
    foreign = write(tmp_path, {"conv1.weight": np.zeros(3, np.float32), "fc.bias": np.zeros(2, np.float32)})
    with pytest.raises(VitsamError, match="not the authors' VisionTransformer layout.*conv1.weight"):
        import_npz(foreign, "vit_s16")
    with pytest.raises(VitsamError, match="no file at"):
        read_npz(tmp_path / "absent.npz")


def test_export_refuses_resnet():
    with pytest.raises(VitsamError, match="ViT and MLP-Mixer.*safetensors"):
        to_authors(create_model("resnet_tiny"))


def test_gelu_form_is_an_option_with_the_authors_default():
    model = create_model("vit_tiny")
    assert model.blocks[0].mlp.act.approximate == "tanh"
    assert create_model("mixer_tiny", gelu="exact").blocks[0].channel_mixing.act.approximate == "none"
    with pytest.raises(VitsamError, match="gelu form 'erf'.*exact, tanh"):
        create_model("vit_tiny", gelu="erf")
    with pytest.raises(VitsamError, match="classifier 'mean'.*gap, token"):
        create_model("vit_tiny", classifier="mean")
    assert math.isclose(float(model.blocks[0].mlp.act(torch.tensor(1.0))),
                        0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715)), rel_tol=1e-6)
