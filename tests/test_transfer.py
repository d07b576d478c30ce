"""Transfer and linear probes: weights loaded from a run directory or a file, a new head for
new classes, ViT position embeddings interpolated over the patch grid (the class token
kept, the originals reproduced at the original size), Mixer only at the same token count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitsam import config as config_lib
from vitsam.config import Config, OptimConfig, SAMConfig
from vitsam.jsonfile import write_json
from vitsam.errors import VitsamError
from vitsam.models import create_model, save_weights
from vitsam.optim import build_optimizer
from vitsam.train.checkpoint import CHECKPOINT, save_checkpoint
from vitsam.train.transfer import freeze_all_but_head, initialize_from


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def trained(name="vit_tiny", seed=0, **kw):
    """A model whose every weight (the zero-initialized head too) is random."""
    torch.manual_seed(seed)
    model = create_model(name, **kw)
    model.registry_name = name
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def as_run(model, run_dir):
    """A run directory as training leaves it: config, model arguments, checkpoint."""
    run_dir.mkdir(parents=True)
    config_lib.save(Config(), run_dir / "config.json")
    args = {"name": model.registry_name, "num_classes": model.num_classes,
            "img_size": model.img_size, "in_chans": model.in_chans, "overrides": {}}
    write_json(args, run_dir / "model.json")
    save_checkpoint({"model": model.state_dict(), "step": 5}, run_dir / CHECKPOINT)
    return run_dir


def test_same_size_reproduces_every_tensor(tmp_path):
    source = trained()
    target = create_model("vit_tiny")
    message = initialize_from(target, as_run(source, tmp_path / "run"))
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    assert "as it was" in message


def test_vit_at_another_resolution_interpolates_position_embeddings(tmp_path):
    source = trained()                                   # 28 px, 7 px patches: a 4 x 4 grid
    target = create_model("vit_tiny", img_size=42)       # a 6 x 6 grid
    message = initialize_from(target, as_run(source, tmp_path / "run"))
    old, new = source.pos_embed.detach(), target.pos_embed.detach()
    assert new.shape == (1, 1 + 36, 64)
    assert torch.equal(new[:, 0], old[:, 0]), "the class token's row is kept"
    # ground truth: each channel's 4 x 4 map resized as an image, one channel at a time
    for channel in (0, 17, 63):
        grid = old[0, 1:, channel].reshape(1, 1, 4, 4)
        expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).reshape(36)
        assert torch.allclose(new[0, 1:, channel], expected, atol=1e-6)
    assert torch.equal(target.patch_embed.weight, source.patch_embed.weight)
    assert "4x4 to a 6x6" in message
    images = torch.rand(2, 1, 42, 42)
    assert target(images).shape == (2, 10)


def test_new_head_for_another_class_count(tmp_path):
    source = trained()
    path = save_weights(source, tmp_path / "model.safetensors")
    target = create_model("vit_tiny", num_classes=5)
    message = initialize_from(target, path)
    assert torch.count_nonzero(target.head.weight) == 0, "a new head starts as the model initializes it"
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight) \
        if hasattr(target.blocks[0].attn, "qkv") else True
    assert torch.equal(target.norm.weight, source.norm.weight)
    assert "new head has 5" in message


def test_mixer_transfers_only_at_the_same_token_count(tmp_path):
    source = trained("mixer_tiny")
    run = as_run(source, tmp_path / "run")
    same = create_model("mixer_tiny", num_classes=3)
    initialize_from(same, run)
    assert torch.equal(same.blocks[0].token_mixing.fc1.weight, source.blocks[0].token_mixing.fc1.weight) \
        if hasattr(same.blocks[0].token_mixing, "fc1") else True
    with pytest.raises(VitsamError, match="same token count"):
        initialize_from(create_model("mixer_tiny", img_size=42), run)


def test_resnet_at_another_resolution_loads_everything(tmp_path):
    source = trained("resnet_tiny")
    target = create_model("resnet_tiny", img_size=42)
    initialize_from(target, as_run(source, tmp_path / "run"))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())


def test_bad_sources_are_clear_errors(tmp_path):
    model = create_model("vit_tiny")
    with pytest.raises(VitsamError, match="neither"):
        initialize_from(model, tmp_path / "nothing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(VitsamError, match="not a vitsam run directory"):
        initialize_from(model, tmp_path / "empty_run")
    with pytest.raises(VitsamError, match="has no tensor"):
        initialize_from(model, as_run(trained("mixer_tiny"), tmp_path / "mixer"))
    with pytest.raises(VitsamError, match="patch_embed"):
        initialize_from(create_model("vit_tiny", in_chans=3), as_run(trained(), tmp_path / "gray"))
    checkpoint = as_run(trained(), tmp_path / "vit") / CHECKPOINT
    initialize_from(model, checkpoint)                   # a checkpoint file works too


def test_linear_probe_trains_the_head_alone_and_keeps_batchnorm_statistics():
    model = trained("resnet_tiny")
    count = freeze_all_but_head(model)
    head = {id(p) for p in model.parameter_groups()["head"]}
    assert count == sum(p.numel() for p in model.parameter_groups()["head"])
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1), SAMConfig())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == head
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items()), "frozen BatchNorm statistics"
    assert all(p.grad is None for p in model.parameters() if id(p) not in head)


def test_the_loop_starts_from_another_run_and_probes_its_head(tmp_path):
    """model.init_from + train.trainable=head through the real training loop: the
    backbone is the source's and stays so; only the new head moves."""
    from vitsam import presets
    from vitsam.train.checkpoint import load_run
    from vitsam.train.loop import train

    source = train(presets.resolve("smoke", None, ["train.stop_after_steps=3"]), tmp_path / "source")
    probe = train(presets.resolve("smoke", None, ["train.stop_after_steps=3", f'model.init_from="{source}"',
                                                  'train.trainable="head"']), tmp_path / "probe")
    before, after = load_run(source).model.state_dict(), load_run(probe).model.state_dict()
    head = {name for name in after if name.startswith(("head.", "norm."))}
    for name, value in after.items():
        if name not in head:
            assert torch.equal(value, before[name]), name
    assert any(not torch.equal(after[name], before[name]) for name in head)
