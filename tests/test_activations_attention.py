"""Activation sparsity, attention maps and rollout, and the per-block table, each against
a computation by hand (the model's own weights applied step by step, dense Hessians)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense import block_of, dense_hessian
from vitsam.analysis.activations import ActivationSparsity, activation_sparsity, by_kind, positive_fraction
from vitsam.analysis.attention import AttentionMaps, attention_maps, attention_rollout, cls_attention
from vitsam.analysis.hessian import HessianAnalysis, activation_norms, block_groups
from vitsam.models import create_model, explicit_attention
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
    return model.eval()


def attention_by_hand(vit, images):
    """Each block's softmax(q k^T / sqrt(d)) computed from its normalized input and its
    qkv weights, (B, heads, N, N) per block."""
    inputs = []
    hooks = [b.norm1.register_forward_hook(lambda m, i, o: inputs.append(o)) for b in vit.blocks]
    with torch.no_grad():
        vit(images)
    for h in hooks:
        h.remove()
    maps = []
    for block, x in zip(vit.blocks, inputs):
        x = x.detach()
        attn = block.attn
        B, N, D = x.shape
        q, k, _ = (x @ attn.qkv.weight.T + attn.qkv.bias).split(D, dim=-1)
        q = q.view(B, N, attn.num_heads, -1).transpose(1, 2)  # (B, heads, N, head_dim)
        k = k.view(B, N, attn.num_heads, -1).transpose(1, 2)
        maps.append((q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1).detach())
    return maps


def test_attention_maps_are_the_class_token_rows_of_the_softmax(vit):
    images = torch.rand(2, 1, 28, 28)
    maps = attention_maps(vit, images)
    by_hand = attention_by_hand(vit, images)
    raw = by_hand[-1][:, :, 0, 1:]  # the class token's row, patches only: (B, heads, 16)
    per_head = raw / raw.sum(-1, keepdim=True)
    np.testing.assert_allclose(maps["per_head"], per_head.view(2, 4, 4, 4).numpy(), rtol=1e-4, atol=1e-6)
    mean = raw.mean(1) / raw.mean(1).sum(-1, keepdim=True)  # the head-averaged attention, renormalized
    np.testing.assert_allclose(maps["mean"], mean.view(2, 4, 4).numpy(), rtol=1e-4, atol=1e-6)
    rollout = attention_rollout(by_hand)[:, 0, 1:]
    np.testing.assert_allclose(maps["rollout"], (rollout / rollout.sum(-1, keepdim=True)).view(2, 4, 4).numpy(),
                               rtol=1e-4, atol=1e-6)
    assert not any(getattr(m, "explicit", False) for m in vit.modules())  # fused path restored
    result = AttentionMaps(images=2).run(vit, [(images, torch.zeros(2, dtype=torch.long))])
    json.dumps(result.metrics, allow_nan=False)
    np.testing.assert_allclose(np.asarray(result.metrics["mean"]), maps["mean"], atol=1e-5)


def test_mixer_sparsity_is_the_share_of_positive_gelu_outputs_and_attention_is_skipped():
    torch.manual_seed(1)
    mixer = create_model("mixer_tiny", num_classes=10, img_size=28, in_chans=1).eval()
    images = torch.rand(3, 1, 28, 28)
    pre = {}
    hooks = [m.fc1.register_forward_hook(lambda mod, i, o, name=name: pre.__setitem__(name, o))
             for name, m in mixer.named_modules() if name.endswith(("token_mixing", "channel_mixing"))]
    with torch.no_grad():
        mixer(images)
    for h in hooks:
        h.remove()
    metrics = ActivationSparsity().run(mixer, [(images, torch.zeros(3, dtype=torch.long))]).metrics
    for name, value in metrics["positive_fraction"].items():
        assert value == pytest.approx(float((F.gelu(pre[name]) > 0).float().mean()), rel=1e-6)
    assert len(metrics["per_block"]["channel_mixing"]) == len(mixer.blocks)
    assert "skipped" in AttentionMaps(images=2).run(mixer, [(images, torch.zeros(3, dtype=torch.long))]).metrics


def test_activation_norms_are_block_output_norms(vit):
    images = torch.rand(4, 1, 28, 28)
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in vit.blocks]
    with torch.no_grad():
        vit(images)
    for h in hooks:
        h.remove()
    labels = torch.zeros(4, dtype=torch.long)
    norms = activation_norms(vit, [(images[:3], labels[:3]), (images[3:], labels[3:])])
    last = outputs[-1].double()  # (B, 17 tokens, 64)
    assert norms["per_image"]["a4"] == pytest.approx(float(last.flatten(1).norm(dim=1).mean()), rel=1e-6)
    assert norms["per_token"]["a4"] == pytest.approx(float(last.norm(dim=-1).mean()), rel=1e-6)


def test_block_table_values_are_dense_block_eigenvalues():
    torch.manual_seed(2)
    vit = create_model("vit_tiny", num_classes=3, img_size=8, in_chans=1, patch_size=4, width=4, depth=2,
                       num_heads=2, mlp_dim=4).double()
    for p in vit.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))]
    result = HessianAnalysis(examples=6, subsets=0, tol=1e-10, density_steps=4, density_vectors=1, trace_samples=1,
                             block_max_steps=300).run(vit, batches)
    table = result.metrics["blocks"]
    groups = block_groups(vit)
    assert set(groups) == {"embedding", "attention", "mlp", "block1", "block2"}
    assert not any(p is vit.blocks[0].norm1.weight for p in groups["attention"])  # LayerNorms: block columns only
    with explicit_attention(vit):  # the fused kernel has no double backward
        H = dense_hessian(vit, batches)
    whole = np.linalg.eigvalsh(H.numpy())
    for name, params in groups.items():
        expected = np.linalg.eigvalsh(block_of(vit, H, params).numpy())[-1]
        assert table["lambda_max"][name] == pytest.approx(expected, rel=1e-6), name
        assert table["converged"][name] and table["errors"][name] <= 1e-10 * abs(expected)
    assert table["lambda_max"]["whole"] == pytest.approx(whole[-1], rel=1e-6)
    assert result.metrics["lambda_min"] == pytest.approx(whole[0], rel=1e-6)
    w = torch.cat([p.detach().flatten() for p in vit.parameters()]).norm()
    assert table["weight_norm"] == pytest.approx(float(w), rel=1e-9)


def test_attention_maps_skip_a_model_without_a_class_token():
    from vitsam.analysis.attention import AttentionMaps

    gap = create_model("vit_tiny", num_classes=10, img_size=28, in_chans=1, classifier="gap", depth=1)
    result = AttentionMaps(images=2).run(gap.eval(), [(torch.rand(2, 1, 28, 28), torch.arange(2))])
    assert "class token" in result.metrics["skipped"] and not result.figures
