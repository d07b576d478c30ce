"""Every preset resolves, and its runlocal variant (the same recipe at toy size) trains."""
from pathlib import Path

import pytest

from vitsam import presets
from vitsam.train.checkpoint import CHECKPOINT, load_checkpoint
from vitsam.train.loop import train

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("name", sorted(presets.list_presets()))
def test_every_preset_resolves_with_a_description(name):
    cfg = presets.resolve(name)
    assert cfg.name == name and presets.describe(name)


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
@pytest.mark.parametrize("name", sorted(presets.list_presets()))
def test_every_preset_runs_two_steps_at_toy_size(name, tmp_path):
    cfg = presets.resolve(name, local=True)
    full = presets.get_preset(name)
    # the recipe is kept: optimizer, SAM, objective, precision
    assert (cfg.optim.name, cfg.sam.rho, cfg.sam.variant, cfg.train.objective) == \
        (full.optim.name, full.sam.rho, full.sam.variant, full.train.objective)
    run = train(cfg, tmp_path / "run")
    assert load_checkpoint(run / CHECKPOINT)["step"] == 2
