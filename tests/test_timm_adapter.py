"""timm models behind the model contract. timm does not import on this CPU build, so a
minimal stand-in ``timm`` module (two small networks shaped like timm's ViT, with its
fused / explicit attention paths, and its ResNet) covers the adapter's logic; the last
test runs real timm wherever it imports."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError
from vitsam.models import VisionModel, capture, create_model, list_models
from vitsam.models.registry import is_model_name
from vitsam.models.weights import load_weights, save_weights

pytestmark = pytest.mark.usefixtures("single_thread")

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(3, 224, 224))


class Mlp(nn.Module):  # timm.layers.Mlp: fc1 -> act -> drop1 -> norm -> fc2 -> drop2
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Attention(nn.Module):  # timm.layers.Attention, one head: fused kernel or explicit softmax
    def __init__(self, dim: int):
        super().__init__()
        self.qkv, self.proj, self.attn_drop = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Dropout(0.0)
        self.fused_attn, self.scale = True, dim ** -0.5

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, N, D) each
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop((q * self.scale @ k.transpose(-2, -1)).softmax(-1)) @ v
        return self.proj(x.squeeze(1))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FakeViT(nn.Module):
    def __init__(self, num_classes=1000, img_size=224, in_chans=3, drop_path_rate=0.0, dim=8, patch=4):
        super().__init__()
        self.pretrained_cfg, self.num_classes = dict(IMAGENET), num_classes
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img_size // patch) ** 2, dim))
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward_features(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x, pre_logits: bool = False):
        return x[:, 0] if pre_logits else self.head(x[:, 0])

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "dist_token"}


class FakeResNet(nn.Module):  # no img_size keyword, like timm's ResNet
    def __init__(self, num_classes=1000, in_chans=3):
        super().__init__()
        self.pretrained_cfg, self.num_classes = dict(IMAGENET), num_classes
        self.conv1, self.bn1 = nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3, 2, padding=1))
        self.fc = nn.Linear(8, num_classes)

    def forward_features(self, x):
        return self.layer2(self.layer1(self.bn1(self.conv1(x)).relu()))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc


@pytest.fixture
def fake_timm(monkeypatch):
    module = types.ModuleType("timm")
    nets = {"fake_vit": FakeViT, "fake_resnet": FakeResNet}

    def create(name, pretrained=False, **kwargs):
        if name not in nets:
            raise RuntimeError(f"Unknown model ({name})")
        return nets[name](**kwargs)

    module.create_model = create
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def test_timm_vit_follows_the_contract(fake_timm):
    torch.manual_seed(0)
    model = create_model("timm/fake_vit", num_classes=3, img_size=8, drop_path_rate=0.1).eval()
    assert isinstance(model, VisionModel) and model.family == "timm" and model.img_size == 8
    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))  # [0, 1] in, normalized inside
        pooled = model.forward_head(model.forward_features(model.normalize(x)), pre_logits=True)
        torch.testing.assert_close(model.head(pooled), model(x))
    groups = model.parameter_groups()
    params = {id(p) for p in model.parameters()}
    blocks = [groups[f"block{k}"] for k in (1, 2)]
    assert len(model.blocks) == 2 and "block3" not in groups
    partition = [id(p) for g in [groups["embedding"], groups["head"], *blocks] for p in g]
    assert sorted(partition) == sorted(params)
    assert {id(p) for p in groups["embedding"]} == {id(model.net.cls_token), id(model.net.pos_embed),
                                                     *(id(p) for p in model.net.patch_embed.parameters())}
    assert {id(p) for p in groups["head"]} >= {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["attention"]} == {id(p) for b in model.net.blocks for p in b.attn.parameters()}
    assert {id(p) for p in groups["mlp"]} == {id(p) for b in model.net.blocks for p in b.mlp.parameters()}
    assert model.no_weight_decay() == {"net.pos_embed", "net.cls_token"}


def test_timm_model_records_attention_and_hidden_activations(fake_timm):
    torch.manual_seed(0)
    model = create_model("timm/fake_vit", num_classes=3, img_size=8).eval()
    x = torch.rand(2, 3, 8, 8)
    with capture(model, attention=True, hidden=True, blocks=True) as rec:
        logits = model(x)
    assert len(rec.attention) == len(rec.blocks) == 2
    assert sorted(rec.hidden) == ["net.blocks.0.mlp.act", "net.blocks.1.mlp.act"]
    with torch.no_grad():
        tokens = model.net.patch_embed(model.normalize(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.net.cls_token.expand(2, -1, -1), tokens], 1) + model.net.pos_embed
        block = model.net.blocks[0]
        q, k, _ = block.attn.qkv(block.norm1(tokens)).chunk(3, dim=-1)
        torch.testing.assert_close(rec.attention[0], (q @ k.transpose(-2, -1) / 8 ** 0.5).softmax(-1).unsqueeze(1))
        mid = tokens + block.attn(block.norm1(tokens))
        torch.testing.assert_close(rec.hidden["net.blocks.0.mlp.act"], F.gelu(block.mlp.fc1(block.norm2(mid))))
    fused = create_model("timm/fake_vit", num_classes=3, img_size=8, fused_attn=True).eval()
    fused.load_state_dict(model.state_dict())
    with capture(fused, attention=True) as rec, torch.no_grad():
        torch.testing.assert_close(fused(x), logits)  # the same function, the fused kernel
    assert rec.attention == []  # ... which shows no probabilities


def test_timm_weights_have_one_name_each_and_round_trip(fake_timm, tmp_path):
    torch.manual_seed(0)
    model = create_model("timm/fake_vit", num_classes=3, img_size=8)
    names = list(model.state_dict())
    assert len(names) == len(set(names)) and all(n.startswith("net.") for n in names)
    path = save_weights(model, tmp_path / "model.safetensors")  # refuses tensors shared under two names
    torch.manual_seed(1)
    fresh = load_weights(create_model("timm/fake_vit", num_classes=3, img_size=8), path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_timm_convnet_without_img_size_and_its_blocks(fake_timm):
    model = create_model("timm/fake_resnet", num_classes=4, img_size=16, in_chans=1)
    assert model.img_size == 16 and model.in_chans == 1
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 4)
    assert [type(b) for b in model.blocks] == [nn.Conv2d] * 3  # layer1's two, layer2's one
    groups = model.parameter_groups()
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.net.fc.parameters()}
    assert {id(p) for p in groups["embedding"]} == {id(p) for m in (model.net.conv1, model.net.bn1)
                                                     for p in m.parameters()}


def test_timm_errors(fake_timm, monkeypatch):
    with pytest.raises(VitsamError, match=r"cannot build timm/nope.*Unknown model \(nope\)"):
        create_model("timm/nope")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(VitsamError, match=r"timm models need the timm package \(pip install vitsam\[timm\]\)"):
        create_model("timm/vit_small_patch16_224")


def test_timm_names_are_accepted_but_not_listed():
    assert is_model_name("timm/vit_small_patch16_224") and is_model_name("vit_tiny")
    assert not is_model_name("timm/") and not is_model_name("vit_tnyi")
    assert not any(name.startswith("timm/") for name in list_models())
    with pytest.raises(VitsamError, match="vit_tnyi.*or timm/<name>"):
        create_model("vit_tnyi")


def real_timm():
    try:
        import timm
    except Exception:  # not installed, or torchvision broken underneath (CPU torch builds)
        pytest.skip("timm does not import here")
    return timm


def test_real_timm_vit_follows_the_contract():
    real_timm()
    from vitsam.analysis.hessian import top_eigenvalues

    torch.manual_seed(0)
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(model.normalize(x)), pre_logits=True)
        torch.testing.assert_close(model.head(pooled), model(x))
    groups = model.parameter_groups()
    assert len(model.blocks) == 12 and groups["attention"] and groups["mlp"]
    with capture(model, attention=True, hidden=True) as rec:
        model(x)
    assert len(rec.hidden) == 12 and len(rec.attention) == 12
    assert rec.attention[0].shape == (2, 3, 5, 5)  # 3 heads, class token + 2x2 patches
    values = top_eigenvalues(model, F.cross_entropy, [(x, y)], params=groups["embedding"], max_steps=3)
    assert len(values) == 1 and torch.isfinite(torch.tensor(values)).all()  # HVPs run
