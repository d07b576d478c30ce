"""Config resolution: presets, files, overrides, and the errors a user meets."""
import json

import pytest

from vitsam import config as config_lib
from vitsam import presets
from vitsam.errors import VitsamError


def test_overrides_are_typed_and_nested():
    cfg = presets.resolve("vit_tiny_fmnist", None, ["optim.lr=1e-3", "sam.rho=0.2", "train.epochs=3",
                                                       "data.crop_scale=[0.3,1]", "train.progress=false"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.sam.rho == 0.2
    assert cfg.train.epochs == 3.0
    assert cfg.data.crop_scale == (0.3, 1.0)
    assert cfg.train.progress is False


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "mixer_tiny"\n[sam]\nrho = 0.3\n')
    cfg = presets.resolve("vit_tiny_fmnist", str(path), ["sam.rho=0.4"])
    assert cfg.model.name == "mixer_tiny"
    assert cfg.sam.rho == 0.4  # command-line overrides win over the file


def test_round_trip_through_json(tmp_path):
    cfg = presets.resolve("resnet_tiny_fmnist_sam")
    config_lib.save(cfg, tmp_path / "config.json")
    assert config_lib.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["lrr", "lr", "weight_decay"]),          # unknown key: lists the valid ones
    ("bogus.lr=1", ["bogus", "optim", "sam"]),
    ("optim.name=lamb", ["lamb", "adamw", "sgd"]),           # unknown choice
    ("train.batch_size=many", ["many", "int"]),              # bad value
    ("model.name=vit_huge", ["vit_huge", "vit_tiny", "resnet50"]),
    ("sam.rho", ["key=value"]),
])
def test_bad_overrides_name_the_key_and_choices(override, words):
    with pytest.raises(VitsamError) as err:
        presets.resolve("vit_tiny_fmnist", None, [override])
    for word in words:
        assert word in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(VitsamError, match="vit_tiny_fmnist"):
        presets.get_preset("no_such_preset")


def test_paper_presets_follow_the_recipe():
    vit = presets.get_preset("vit_b16_imagenet_sam")
    assert (vit.optim.name, vit.optim.lr, vit.optim.weight_decay, vit.optim.warmup_steps) == ("adamw", 3e-3, 0.3, 10_000)
    assert vit.train.epochs == 300 and vit.train.batch_size == 4096 and vit.optim.grad_clip == 1.0
    assert vit.sam.rho > 0 and presets.get_preset("vit_b16_imagenet").sam.rho == 0
    resnet = presets.get_preset("resnet152_imagenet")
    assert (resnet.optim.name, resnet.optim.lr, resnet.train.epochs, resnet.optim.warmup_steps) == ("sgd", 1.6, 90, 5000)


def test_bad_config_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\n")
    with pytest.raises(VitsamError, match="bad.toml"):
        presets.resolve("vit_tiny_fmnist", str(path))
    with pytest.raises(VitsamError, match="does not exist"):
        presets.resolve("vit_tiny_fmnist", str(tmp_path / "missing.json"))
    (tmp_path / "c.json").write_text(json.dumps({"train": {"epochz": 1}}))
    with pytest.raises(VitsamError, match="epochz"):
        presets.resolve("vit_tiny_fmnist", str(tmp_path / "c.json"))
