"""safetensors weights, imported run directories, export, and the import / export commands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitsam import config as config_lib
from vitsam.errors import VitsamError
from vitsam.models import create_model
from vitsam.models.npz import read_npz, save_npz
from vitsam.models.vit import resize_pos_embed
from vitsam.models.weights import load_weights, save_weights
from vitsam.presets import get_preset
from vitsam.train.checkpoint import load_run
from vitsam.train.interop import add_cli, export_run, import_run
from vitsam.train.transfer import load_into

from test_models import perturb_

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).parent / "data" / "npz"
REFERENCE = dict(np.load(DATA / "reference.npz"))
IMAGES = torch.from_numpy(REFERENCE["images"]).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
MIXER_SIZES = dict(patch_size=4, width=16, depth=2, tokens_mlp_dim=8, channels_mlp_dim=32)


def perturbed(name: str, **kwargs):
    torch.manual_seed(0)
    return perturb_(create_model(name, **kwargs)).eval()


def test_safetensors_round_trip_is_exact_and_holds_no_pickle(tmp_path):
    model = perturbed("vit_tiny", classifier="gap", representation_size=8)
    path = save_weights(model, tmp_path / "model.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # u64 header length, then a JSON header: no pickle
    fresh = load_weights(create_model("vit_tiny", classifier="gap", representation_size=8), path)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert not list(tmp_path.glob("*.tmp"))


def test_safetensors_errors_name_the_file_key_and_shape(tmp_path):
    path = save_weights(create_model("vit_tiny"), tmp_path / "model.safetensors")
    with pytest.raises(VitsamError, match=r"tensor 'pos_embed' has shape \(1, 17, 64\).*\(1, 50, 64\)"):
        load_weights(create_model("vit_tiny", patch_size=4), path)
    with pytest.raises(VitsamError, match=r"has no tensor 'blocks.4.norm1.weight' \(expected shape \(64,\)"):
        load_weights(create_model("vit_tiny", depth=5), path)
    with pytest.raises(VitsamError, match="tensor.*this VisionTransformer does not, e.g. 'blocks.3"):
        load_weights(create_model("vit_tiny", depth=3), path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(VitsamError, match="not a readable safetensors file"):
        load_weights(create_model("vit_tiny"), truncated)
    with pytest.raises(VitsamError, match="no weights file"):
        load_weights(create_model("vit_tiny"), tmp_path / "absent.safetensors")


def test_load_into_resizes_position_embeddings_and_leaves_out_another_head(tmp_path):
    source = perturbed("vit_tiny")  # 7x7 patches of 28 px: a 4x4 grid, 10 classes
    path = save_weights(source, tmp_path / "pretrained.safetensors")
    model = create_model("vit_tiny", img_size=56, num_classes=3)  # an 8x8 grid, 3 classes
    notes = load_into(model, path)
    assert sorted(notes) == ["head.bias of 10 classes left out; the new head has 3",
                             "head.weight of 10 classes left out; the new head has 3",
                             "pos_embed resized from a 4x4 to a 8x8 patch grid (bicubic; class token kept)"]
    torch.testing.assert_close(model.pos_embed.detach(), resize_pos_embed(source.pos_embed.detach(), 8))
    assert model.head.weight.abs().sum() == 0
    for key, value in source.state_dict().items():
        if key not in ("pos_embed", "head.weight", "head.bias"):
            assert torch.equal(model.state_dict()[key], value), key
    run = fake_trained_run(tmp_path, source)
    same = create_model("vit_tiny")
    assert load_into(same, run) == []
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(VitsamError, match=r"tensor 'blocks.0.mlp.fc1.bias' has shape \(128,\).*\(256,\)"):
        load_into(create_model("vit_tiny", mlp_dim=256), path)
    gap = create_model("vit_s16", img_size=16, num_classes=2, **dict(patch_size=4, width=16, depth=2,
                                                                      num_heads=4, mlp_dim=24), classifier="gap",
                       representation_size=12)
    assert load_into(gap, DATA / "vit_gap_repr.npz") == ["head of 5 classes left out; the model's new "
                                                               "head has 2 classes"]


def test_import_run_writes_a_run_directory_with_the_authors_logits(tmp_path):
    out, notes = import_run(DATA / "mixer.npz", "mixer_s16", tmp_path / "run", img_size=16,
                            dataset="cifar10:/data/cifar", **MIXER_SIZES)
    assert notes == []
    cfg = config_lib.load(out / "config.json")
    assert cfg.model.name == "mixer_s16" and cfg.model.overrides == MIXER_SIZES
    assert cfg.data.img_size == 16 and cfg.data.dataset == "cifar10:/data/cifar"
    assert cfg.optim.lr == get_preset("mixer_s16_imagenet").optim.lr  # the paper's recipe
    args = json.loads((out / "model.json").read_text())
    assert args == {"name": "mixer_s16", "num_classes": 5, "img_size": 16, "in_chans": 3, "overrides": MIXER_SIZES}
    model = create_model(args["name"], num_classes=args["num_classes"], img_size=args["img_size"],
                         in_chans=args["in_chans"], **args["overrides"])
    load_weights(model, out / "model.safetensors")
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(IMAGES).numpy(), REFERENCE["mixer/logits"], rtol=1e-5, atol=2e-6)
    provenance = json.loads((out / "import.json").read_text())
    assert len(provenance["sha256"]) == 64 and provenance["notes"] == []
    with pytest.raises(VitsamError, match="already a run directory"):
        import_run(DATA / "mixer.npz", "mixer_s16", out, img_size=16, **MIXER_SIZES)
    with pytest.raises(VitsamError, match="unknown preset 'vit_tiny_imagenet'"):
        import_run(DATA / "mixer.npz", "vit_tiny", tmp_path / "other")


def test_an_imported_run_loads_like_a_trained_one_and_exports_the_file_back(tmp_path):
    sizes = dict(patch_size=4, width=16, depth=2, num_heads=4, mlp_dim=24)
    out, _ = import_run(DATA / "vit_gap_repr.npz", "vit_s16", tmp_path / "run", img_size=16, **sizes)
    run = load_run(out)  # what eval, analyze and robust call
    assert run.step == 0 and run.model.classifier == "gap"
    with torch.no_grad():
        np.testing.assert_allclose(run.model(IMAGES).numpy(), REFERENCE["vit_gap_repr/logits"], rtol=1e-5,
                                   atol=2e-6)
    original, exported = read_npz(DATA / "vit_gap_repr.npz"), read_npz(export_run(out, "npz"))
    assert exported.keys() == original.keys()
    assert all(np.array_equal(exported[k], original[k]) for k in original)


def fake_trained_run(tmp_path: Path, model) -> Path:
    """What the training loop leaves: config.json, model.json, checkpoints/last.pt."""
    run = tmp_path / "trained"
    (run / "checkpoints").mkdir(parents=True)
    config_lib.save(get_preset("smoke"), run / "config.json")
    args = {"name": "vit_tiny", "num_classes": 10, "img_size": 28, "in_chans": 1, "overrides": {}}
    (run / "model.json").write_text(json.dumps(args))
    torch.save({"model": model.state_dict(), "step": 7}, run / "checkpoints" / "last.pt")
    return run


def test_export_run_in_both_formats(tmp_path):
    model = perturbed("vit_tiny")
    run = fake_trained_run(tmp_path, model)
    npz = export_run(run, "npz")
    assert npz == run / "model.npz"
    arrays = read_npz(npz)
    assert arrays["Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel"].shape == (64, 4, 16)
    expected = model.state_dict()["blocks.3.attn.qkv.weight"][:64].T.reshape(64, 4, 16).numpy()
    assert np.array_equal(arrays["Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel"],
                          expected)
    safetensors = export_run(run, "safetensors", tmp_path / "elsewhere" / "w.safetensors")
    fresh = load_weights(create_model("vit_tiny"), safetensors)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(VitsamError, match="unknown export format 'onnx'"):
        export_run(run, "onnx")


def test_import_and_export_commands(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    run = tmp_path / "run"
    args = parser.parse_args(["import", str(DATA / "vit_token.npz"), "--model", "vit_s16", "--out", str(run),
                              "--img-size", "24", "--num-classes", "3", "--dataset", "folder:/x",
                              "--set", "patch_size=4", "--set", "width=16", "--set", "depth=2",
                              "--set", "num_heads=2", "--set", "mlp_dim=32", "--set", "gelu=exact"])
    args.func(args)
    printed = capsys.readouterr().out
    assert "note: position embeddings resized from a 4x4 to a 6x6" in printed
    assert "note: head of 5 classes left out" in printed
    model_args = json.loads((run / "model.json").read_text())
    assert model_args["num_classes"] == 3 and model_args["img_size"] == 24
    assert model_args["overrides"]["gelu"] == "exact"

    model = perturbed("vit_tiny")
    trained = fake_trained_run(tmp_path, model)
    args = parser.parse_args(["export", str(trained), "--format", "npz", "--out", str(tmp_path / "x.npz")])
    args.func(args)
    assert "x.npz: npz weights" in capsys.readouterr().out
    exported, direct = read_npz(tmp_path / "x.npz"), read_npz(save_npz(model, tmp_path / "direct.npz"))
    assert exported.keys() == direct.keys()
    assert all(np.array_equal(exported[k], direct[k]) for k in direct)
