"""timm models behind the model contract: ``create_model("timm/vit_small_patch16_224", ...)``.

An optional extra (``pip install vitsam[timm]``). The adapter keeps the timm network as
``net`` (its state-dict names get a ``net.`` prefix) and adds what the contract needs:

- inputs in [0, 1], normalized inside with the timm model's ``pretrained_cfg`` mean/std;
- ``forward_features`` / ``forward_head`` are timm's own;
- ``blocks``: timm's ``blocks``, or the blocks of its ``stages`` / ``layer1..4``;
- ``parameter_groups``: the parameters before the first block are the embedding, those
  after the last are the head; attention / mlp (ViT-like) or token_mixing /
  channel_mixing (Mixer-like) by timm's module names;
- an ``ActivationProbe`` after the activation of every timm ``Mlp`` (fc1 -> act -> fc2),
  so activation sparsity works;
- an ``AttentionProbe`` in front of every timm ``Attention``'s ``attn_drop``, which its
  explicit path applies to the softmax probabilities. timm's fused kernel
  (``scaled_dot_product_attention``) neither shows the probabilities nor supports the
  forward-mode derivatives of Hessian-vector products, and ``explicit_attention`` only
  switches vitsam's own attention, so the adapter turns timm's ``fused_attn`` off unless
  ``fused_attn=True`` is passed (faster training, no attention maps or Hessians).

Other keywords go to ``timm.create_model`` (``pretrained=True`` downloads timm's weights,
``drop_path_rate``...).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vitsam.errors import VitsamError
from vitsam.models.base import ActivationProbe, AttentionProbe, VisionModel

EXTRA_HINT = "pip install vitsam[timm]"


def import_timm():
    try:
        import timm
    except Exception as err:  # ImportError, or a broken torchvision underneath
        raise VitsamError(f"timm models need the timm package ({EXTRA_HINT}); importing timm failed: "
                          f"{type(err).__name__}: {err}") from None
    return timm


def create_timm_model(name: str, num_classes: int | None = None, img_size: int | None = None,
                      in_chans: int | None = None, fused_attn: bool = False, **kwargs) -> "TimmModel":
    timm = import_timm()
    sizes = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None}
    try:
        try:
            net = timm.create_model(name, **sizes, **({"img_size": img_size} if img_size else {}), **kwargs)
        except TypeError as err:  # convolutional nets take no img_size: they run at any size
            if not (img_size and "img_size" in str(err)):
                raise
            net = timm.create_model(name, **sizes, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:  # timm: "Unknown model (...)", bad keywords
        raise VitsamError(f"cannot build timm/{name} with {kwargs or 'no keywords'}: {err}") from None
    return TimmModel(net, name, img_size=img_size, in_chans=in_chans or 3, fused_attn=fused_attn)


class TimmModel(VisionModel):
    family = "timm"

    def __init__(self, net: nn.Module, name: str, img_size: int | None = None, in_chans: int = 3,
                 fused_attn: bool = False):
        cfg = getattr(net, "pretrained_cfg", None) or {}
        img_size = img_size or (cfg.get("input_size") or (3, 224, 224))[-1]
        super().__init__(net.num_classes, in_chans, img_size, _per_channel(cfg.get("mean", 0.5), in_chans),
                         _per_channel(cfg.get("std", 0.5), in_chans))
        self.timm_name = name
        self.net = net
        _probe_mlp_activations(net)
        _probe_attention(net, fused_attn)
        # Kept out of the module tree: net already owns these blocks, and registering them
        # twice would give every block parameter two names in the state dict.
        self.__dict__["_blocks"] = nn.ModuleList(_find_blocks(net))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.__dict__["_blocks"]

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(features, pre_logits=pre_logits)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        in_blocks = {id(p) for p in self.blocks.parameters()}
        params = list(self.parameters())
        first = next((i for i, p in enumerate(params) if id(p) in in_blocks), len(params))
        groups = {"embedding": [p for p in params[:first] if id(p) not in in_blocks],
                  "head": [p for p in params[first:] if id(p) not in in_blocks]}
        for group, pattern in (("attention", r"net\.blocks\.\d+\.attn\."), ("mlp", r"net\.blocks\.\d+\.mlp\."),
                               ("token_mixing", r"net\.blocks\.\d+\.mlp_tokens\."),
                               ("channel_mixing", r"net\.blocks\.\d+\.mlp_channels\.")):
            found = self.params_matching(pattern)
            if found:
                groups[group] = found
        return {**groups, **self.block_groups()}

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.net, "no_weight_decay", lambda: set())()
        return {f"net.{n}" for n in names} & {n for n, _ in self.named_parameters()}


def _per_channel(values, in_chans: int) -> tuple | float:
    """timm's RGB statistics for ``in_chans`` channels: their average for other channel counts."""
    values = tuple(values) if isinstance(values, (tuple, list)) else (float(values),)
    return values if len(values) == in_chans else sum(values) / len(values)


def _find_blocks(net: nn.Module) -> list[nn.Module]:
    if isinstance(getattr(net, "blocks", None), (nn.ModuleList, nn.Sequential)):
        return list(net.blocks)
    if isinstance(getattr(net, "stages", None), (nn.ModuleList, nn.Sequential)):
        return [b for stage in net.stages for b in getattr(stage, "blocks", [stage])]
    layers = [getattr(net, f"layer{i}") for i in range(1, 5) if hasattr(net, f"layer{i}")]
    return [b for layer in layers for b in layer]


def _probe_mlp_activations(net: nn.Module) -> None:
    """timm's Mlp runs fc1 -> act -> drop1 -> norm -> fc2: an identity probe after ``act``
    sees the hidden activations without changing the function or the state dict."""
    for module in list(net.modules()):
        act = getattr(module, "act", None)
        if (isinstance(act, nn.Module) and not list(act.parameters()) and hasattr(module, "fc1")
                and hasattr(module, "fc2") and not isinstance(act, nn.Sequential)):
            module.act = nn.Sequential(OrderedDict(act=act, probe=ActivationProbe()))


class ProbedDropout(nn.Dropout):
    """timm's ``attn_drop`` with an AttentionProbe in front; still a Dropout, since timm's
    fused path reads ``attn_drop.p``."""

    def __init__(self, p: float):
        super().__init__(p)
        self.probe = AttentionProbe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.probe(x))


def _probe_attention(net: nn.Module, fused: bool) -> None:
    """timm's Attention, explicit path: softmax(q k^T * scale) -> attn_drop -> @ v."""
    for module in net.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "qkv") and isinstance(
                getattr(module, "attn_drop", None), nn.Dropout):
            module.attn_drop = ProbedDropout(module.attn_drop.p)
            module.fused_attn = fused
