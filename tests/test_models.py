"""Model families and registry: every registered model gets forward/backward and contract
tests (timm style); parameter counts against the paper's model table; attention paths; capture."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitsam.errors import VitsamError
from vitsam.models import (VisionModel, capture, create_model, explicit_attention, list_models, load_weights,
                           save_weights)
from vitsam.models.compilation import compile_in_place
from vitsam.models.layers import DropPath

# The paper's model table: millions of parameters at 224 px, 1000 classes.
PAPER_PARAMS = {
    "vit_s32": 23, "vit_s16": 22, "vit_s14": 22, "vit_s8": 22, "vit_b32": 88, "vit_b16": 87,
    "mixer_s32": 19, "mixer_s16": 18, "mixer_s8": 20, "mixer_b32": 60, "mixer_b16": 59, "mixer_b8": 64,
    "resnet50": 25, "resnet101": 44, "resnet152": 60,
    "resnet50x2": 98, "resnet101x2": 173, "resnet152x2": 236,
}
PAPER_DEPTH = {"vit": 12, "mixer_s": 8, "mixer_b": 12, "resnet50": 16, "resnet101": 33, "resnet152": 50}
TINY = ["vit_tiny", "mixer_tiny", "resnet_tiny"]
FAMILY_GROUPS = {"vit": ("attention", "mlp"), "mixer": ("token_mixing", "channel_mixing"), "resnet": ()}


def small(name: str) -> VisionModel:
    """A real, quick-to-run instance: tiny models as registered; paper models with their
    widths and patch sizes but one block at 32 px; ResNets with one narrow block per stage
    (their stem, bottlenecks and width factor still run)."""
    if name in TINY:
        return create_model(name)
    shallow = ({"layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64)} if name.startswith("resnet")
               else {"depth": 1})
    img_size = 28 if name == "vit_s14" else 32
    return create_model(name, num_classes=7, img_size=img_size, **shallow)


def images(model: VisionModel, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, model.in_chans, model.img_size, model.img_size)


def perturb_(model: VisionModel, scale: float = 0.05) -> VisionModel:
    """Move off the zero-initialized head / residual gammas, where most gradients vanish."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def test_registry_holds_the_paper_and_tiny_models():
    assert set(PAPER_PARAMS) | set(TINY) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_model_at_full_size_on_meta(name):
    """Parameter count, depth and output shape at 224 px: meta tensors cost nothing."""
    with torch.device("meta"):
        model = create_model(name)
        logits = model(torch.rand(2, 3, 224, 224))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    # The paper rounds ViT counts (86.6M -> 87M) and truncates the others (25.6M -> 25M).
    assert PAPER_PARAMS[name] in (round(millions), math.floor(millions)), millions
    depth_key = next(k for k in PAPER_DEPTH if name.startswith(k))
    assert len(model.blocks) == PAPER_DEPTH[depth_key]
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = perturb_(small(name))
    logits = model(images(model))
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        # The token-mixing output bias adds the same constant to every channel of a
        # token, which the next LayerNorm removes: its gradient is zero by design.
        if not pname.endswith("token_mixing.fc2.bias"):
            assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    torch.manual_seed(0)
    model = perturb_(small(name)).eval()
    assert model.family in FAMILY_GROUPS
    x = images(model)
    features = model.forward_features(model.normalize(x))
    torch.testing.assert_close(model(x), model.forward_head(features))
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.head.in_features)
    torch.testing.assert_close(model.head(pooled), model(x))

    groups = model.parameter_groups()
    all_ids = {id(p) for p in model.parameters()}
    block_keys = [f"block{k}" for k in range(1, len(model.blocks) + 1)]
    # embedding, the blocks and the head partition the parameters.
    partition = [id(p) for key in ["embedding", "head", *block_keys] for p in groups[key]]
    assert sorted(partition) == sorted(all_ids)
    for k, block in enumerate(model.blocks, 1):
        assert {id(p) for p in groups[f"block{k}"]} == {id(p) for p in block.parameters()}
    assert {id(p) for p in groups["head"]} >= {id(p) for p in model.head.parameters()}
    for key in FAMILY_GROUPS[model.family]:
        sub_module = {"attention": "attn", "mlp": "mlp"}.get(key, key)
        expected = {id(p) for b in model.blocks for p in getattr(b, sub_module).parameters()}
        assert {id(p) for p in groups[key]} == expected, key
    if model.family == "resnet":
        stages = [groups[k] for k in groups if k.startswith("stage")]
        assert sorted(id(p) for s in stages for p in s) == sorted(
            id(p) for b in model.blocks for p in b.parameters())
        assert len(stages) == (3 if name == "resnet_tiny" else 4)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)


def test_vit_exempts_token_and_position_embeddings_from_decay():
    assert create_model("vit_tiny").no_weight_decay() == {"cls_token", "pos_embed"}


def test_heads_start_at_zero():
    for name in TINY:
        model = create_model(name)
        assert model.head.weight.abs().sum() == 0 and model.head.bias.abs().sum() == 0
        assert torch.all(model(images(model)) == 0)


def test_resnet_x2_doubles_every_width_including_the_stem():
    with torch.device("meta"):
        base, wide = create_model("resnet50"), create_model("resnet50x2")
    assert wide.stem[0].out_channels == 2 * base.stem[0].out_channels == 128
    assert wide.head.in_features == 2 * base.head.in_features == 4096


def test_resnet_tiny_is_cifar_style():
    model = create_model("resnet_tiny")
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sorted(set(model.block_stage)) == [1, 2, 3]
    assert set(model.parameter_groups()) >= {"stage1", "stage2", "stage3", "block3"}


def test_resnet_is_channels_last_with_the_values_of_the_nchw_model(tmp_path, single_thread):
    model = perturb_(create_model("resnet_tiny", in_chans=3)).train()
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not model.stem[0].weight.is_contiguous()  # (1x1 kernels are alike in both layouts)
    nchw = create_model("resnet_tiny", in_chans=3).to(memory_format=torch.contiguous_format)
    nchw.load_state_dict(model.state_dict())
    assert all(m.weight.is_contiguous() for m in nchw.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.rand(4, 3, 28, 28)
    out, ref = model(x), nchw(x)
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for p, q in zip(model.parameters(), nchw.parameters()):
        assert p.grad.stride() == p.stride()  # autograd keeps the gradient in the weight's layout
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    save_weights(model, tmp_path / "w.safetensors")  # written as plain NCHW tensors
    fresh = create_model("resnet_tiny", in_chans=3)
    load_weights(fresh, tmp_path / "w.safetensors")
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert fresh.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_training_uses_the_fused_attention_kernel_unless_probabilities_are_captured(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    model = perturb_(create_model("vit_tiny")).train()
    model(images(model)).sum().backward()
    assert len(calls) == len(model.blocks)
    with capture(model, attention=True) as recording:
        model(images(model))
    assert len(calls) == len(model.blocks) and len(recording.attention) == len(model.blocks)
    x = images(model, batch=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU bf16: the explicit path (its fused backward is slow)
        logits = model(x)
    assert len(calls) == len(model.blocks)
    assert torch.allclose(logits.float(), model(x), atol=0.05 * model(x).abs().max().item())


def test_a_model_that_cannot_compile_trains_eagerly(single_thread):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    model = perturb_(create_model("mixer_tiny", depth=1))
    keys = list(model.state_dict())
    x = images(model)
    expected = model(x)
    compile_in_place(model, backend=failing_backend)
    out = model(x)
    out.sum().backward()
    assert torch.equal(out, expected) and model.head.weight.grad is not None
    assert list(model.state_dict()) == keys  # checkpoints stay interchangeable with eager runs


def test_overrides_reach_the_constructor():
    model = create_model("vit_tiny", patch_size=4, num_classes=3, in_chans=3, img_size=28, depth=2)
    assert model.pos_embed.shape == (1, 7 * 7 + 1, 64)
    assert len(model.blocks) == 2
    assert model(torch.rand(1, 3, 28, 28)).shape == (1, 3)
    assert create_model("vit_s16", img_size=32).img_size == 32


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(VitsamError, match="vit_tnyi.*vit_s16"):
        create_model("vit_tnyi")


def test_unknown_keyword_is_named_with_the_valid_ones():
    with pytest.raises(VitsamError, match="drop_pat_rate.*drop_path_rate"):
        create_model("vit_tiny", drop_pat_rate=0.1)
    with pytest.raises(VitsamError, match="widht.*width_factor"):
        create_model("resnet_tiny", widht=2)


def test_bad_sizes_are_user_errors():
    with pytest.raises(VitsamError, match="not divisible by patch_size"):
        create_model("vit_tiny", img_size=30)
    with pytest.raises(VitsamError, match="28x28.*img_size=32"):
        create_model("mixer_tiny")(torch.rand(1, 1, 32, 32))
    with pytest.raises(VitsamError, match=r"\(B, 1, H, W\).*in_chans"):
        create_model("resnet_tiny")(torch.rand(1, 3, 28, 28))
    with pytest.raises(VitsamError, match="block"):
        create_model("resnet_tiny", block="bottle")


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = perturb_(create_model("vit_tiny", attn_drop_rate=0.3)).eval()
    x = images(model, 4)
    fused = model(x)
    with explicit_attention(model):
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert not any(m.explicit for m in model.modules() if hasattr(m, "explicit"))


def test_hessian_vector_product_under_explicit_attention():
    """Double backward through attention, checked against a central difference of gradients."""
    torch.manual_seed(0)
    model = perturb_(create_model("vit_tiny", depth=1, width=16, mlp_dim=32)).double().eval()
    x, y = images(model, 3).double(), torch.tensor([0, 1, 2])
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def grads() -> list[torch.Tensor]:
        return torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)

    with explicit_attention(model):
        g = grads()
        hvp = torch.autograd.grad(g, params, grad_outputs=v)
        eps = 1e-5
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        g_plus = grads()
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(2 * eps * d)
        g_minus = grads()
    for h, gp, gm in zip(hvp, g_plus, g_minus):
        torch.testing.assert_close(h, (gp - gm) / (2 * eps), rtol=1e-4, atol=1e-6)


def test_capture_vit_records_true_attention_blocks_and_hidden():
    torch.manual_seed(0)
    model = perturb_(create_model("vit_tiny")).eval()
    x = images(model, 3)
    with capture(model, attention=True, blocks=True, hidden=True) as rec:
        model(x)
        model(x)  # the recording holds the latest call only
    depth, tokens = len(model.blocks), 4 * 4 + 1  # 7x7 patches of 28x28 + class token
    assert len(rec.attention) == len(rec.blocks) == depth
    for attn in rec.attention:
        assert attn.shape == (3, 4, tokens, tokens)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, tokens))
    assert sorted(rec.hidden) == sorted(f"blocks.{i}.mlp" for i in range(depth))
    assert rec.hidden["blocks.0.mlp"].shape == (3, tokens, 128)
    torch.testing.assert_close(rec.blocks[-1], model.forward_features(model.normalize(x)))

    # Ground truth for block 0, by hand: softmax(q k^T / sqrt(d)) on the embedded tokens.
    with torch.no_grad():
        embed = model.patch_embed  # a patch-sized, patch-strided convolution, applied by hand
        patches = F.conv2d(model.normalize(x), embed.weight, embed.bias, stride=embed.stride)
        patches = patches.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
        tokens0 = torch.cat([model.cls_token.expand(3, -1, -1), patches], 1) + model.pos_embed
        block = model.blocks[0]
        q, k, _ = block.attn.qkv(block.norm1(tokens0)).chunk(3, dim=-1)
        q, k = (t.reshape(3, tokens, 4, 16).transpose(1, 2) for t in (q, k))
        expected = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)
        torch.testing.assert_close(rec.attention[0], expected)
        mid = tokens0 + block.attn(block.norm1(tokens0))
        u = block.mlp.fc1(block.norm2(mid))  # GELU in flax's tanh form, written out
        gelu = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        torch.testing.assert_close(rec.hidden["blocks.0.mlp"], gelu)
        torch.testing.assert_close(rec.blocks[0], block(tokens0))
    assert not rec.attention[0].requires_grad


def test_capture_cleans_up_and_can_keep_the_graph():
    model = create_model("vit_tiny")
    with capture(model, attention=True, blocks=True, hidden=True, detach=False) as rec:
        model(images(model))
        assert rec.blocks[0].requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any(m.explicit for m in model.modules() if hasattr(m, "explicit"))
    with explicit_attention(model):  # nesting restores the outer setting
        with capture(model, attention=True):
            pass
        assert model.blocks[0].attn.explicit


def test_capture_mixer_and_resnet():
    mixer = create_model("mixer_tiny")
    with capture(mixer, attention=True, blocks=True, hidden=True) as rec:
        mixer(images(mixer))
    assert rec.attention == [] and len(rec.blocks) == 4
    assert rec.hidden["blocks.0.token_mixing"].shape == (2, 64, 64)  # (B, D, tokens_mlp_dim)
    assert rec.hidden["blocks.3.channel_mixing"].shape == (2, 16, 128)  # (B, N, channels_mlp_dim)
    resnet = create_model("resnet_tiny")
    with capture(resnet, blocks=True) as rec:
        resnet(images(resnet))
    assert [b.shape[1:] for b in rec.blocks] == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]


def test_drop_path_is_per_sample_and_replayable():
    layer = DropPath(0.5).train()
    x = torch.ones(64, 3, 5)
    state = torch.get_rng_state()
    out = layer(x)
    kept = out.flatten(1).amax(1) > 0
    assert 0 < kept.sum() < 64
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2.0))  # x / keep_prob
    assert out[~kept].abs().sum() == 0
    torch.set_rng_state(state)
    torch.testing.assert_close(layer(x), out)  # a SAM step replays the RNG: same masks
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("name", TINY)
def test_stochastic_models_replay_with_the_rng_state(name):
    torch.manual_seed(0)
    model = perturb_(create_model(name, drop_rate=0.2, drop_path_rate=0.3)).train()
    x = images(model, 4)
    state = torch.get_rng_state()
    first = model(x)
    torch.set_rng_state(state)
    torch.testing.assert_close(model(x), first)
    assert not torch.allclose(model(x), first)
