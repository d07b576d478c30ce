"""Activation sparsity, attention maps and rollout, and the per-block table's norms."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from vitsam.analysis.activations import ActivationSparsity, activation_sparsity, by_kind, positive_fraction
from vitsam.analysis.attention import AttentionMaps, attention_maps, attention_rollout, cls_attention
from vitsam.analysis.hessian import HessianAnalysis, activation_norms
from vitsam.models import create_model
from vitsam.models.base import ActivationProbe


pytestmark = pytest.mark.usefixtures("single_thread")


class ProbeOnly(nn.Module):
    """Hidden activations are the input itself (block 1) and minus the input (block 2)."""
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"mlp": nn.ModuleDict({"probe": ActivationProbe()})})
                                    for _ in range(2))

    def forward(self, x):
        for sign, block in zip((1, -1), self.blocks):
            block["mlp"]["probe"](sign * x)
        return x.flatten(1)


def test_positive_fraction_of_a_hand_made_activation():
    assert positive_fraction(torch.tensor([[-1.0, 0.0, 2.0, 3.0]])) == 0.5  # zero is not active


def test_sparsity_counts_over_all_batches():
    x1 = torch.tensor([[1.0, -1.0, 2.0]])          # 2 of 3 positive
    x2 = torch.tensor([[-1.0, -2.0, 0.0], [1.0, 1.0, 1.0]])  # 3 of 6 positive
    fractions = activation_sparsity(ProbeOnly(), [(x1, None), (x2, None)])
    assert fractions == pytest.approx({"blocks.0.mlp": 5 / 9, "blocks.1.mlp": 3 / 9})
    assert by_kind(fractions) == {"mlp": [pytest.approx(5 / 9), pytest.approx(3 / 9)]}


def test_rollout_on_a_hand_computed_case():
    first = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.8]]]])  # (1, 2 heads, 2, 2)
    second = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])                         # (1, 1 head, 2, 2)
    # (A + I) / 2: [[.75, .25], [.1, .9]] and [[.5, .5], [.5, .5]]; rollout = second @ first.
    expected = torch.tensor([[[0.425, 0.575], [0.425, 0.575]]])
    torch.testing.assert_close(attention_rollout([first, second]), expected)
    torch.testing.assert_close(attention_rollout([first])[0], torch.tensor([[0.75, 0.25], [0.1, 0.9]]))
    torch.testing.assert_close(cls_attention(first), torch.tensor([[[0.5], [0.5]]]))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, img_size=28, in_chans=1)
    for p in model.parameters():  # the zero-initialized head would give a flat landscape
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_attention_maps_of_a_vit(vit):
    images = torch.rand(2, 1, 28, 28)
    maps = attention_maps(vit, images)
    heads = maps["per_head"]
    assert heads.ndim == 4 and heads.shape[0] == 2 and heads.shape[2] == heads.shape[3]
    for key in ("per_head", "mean", "rollout"):
        np.testing.assert_allclose(maps[key].sum(axis=(-2, -1)), 1.0, rtol=1e-5)
    assert not any(getattr(m, "explicit", False) for m in vit.modules())  # fused path restored
    result = AttentionMaps(images=2).run(vit, [(images, torch.zeros(2, dtype=torch.long))])
    json.dumps(result.metrics)
    assert np.asarray(result.metrics["mean"]).shape == maps["mean"].shape


def test_non_attention_model_is_skipped_not_failed():
    mixer = create_model("mixer_tiny", num_classes=10, img_size=28, in_chans=1)
    batches = [(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))]
    assert "skipped" in AttentionMaps(images=2).run(mixer, batches).metrics
    per_block = ActivationSparsity().run(mixer, batches).metrics["per_block"]
    assert set(per_block) == {"token_mixing", "channel_mixing"} and len(per_block["channel_mixing"]) == len(mixer.blocks)


def test_block_table_of_a_vit(vit):
    images, labels = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in vit.blocks]
    with torch.no_grad():
        vit(images)
    for h in hooks:
        h.remove()
    norms = activation_norms(vit, [(images[:3], labels[:3]), (images[3:], labels[3:])])
    last = len(vit.blocks)
    assert norms[f"a{last}"] == pytest.approx(float(outputs[-1].flatten(1).norm(dim=1).mean()), rel=1e-5)
    result = HessianAnalysis(max_steps=3, density_steps=3, block_max_steps=2, trace_samples=2).run(
        vit, [(images, labels)])
    json.dumps(result.metrics)
    table = result.metrics["blocks"]
    assert {"embedding", "attention", "mlp", "block1", f"block{last}", "whole"} <= set(table["lambda_max"])
    assert table["lambda_max"]["whole"] == result.metrics["lambda_max"]
    w = torch.cat([p.detach().flatten() for p in vit.parameters()]).norm()
    assert table["weight_norm"] == pytest.approx(float(w), rel=1e-5)
    assert set(result.figures) == {"hessian_density"}
