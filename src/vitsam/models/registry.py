"""Models by name (timm style): ``create_model("vit_s16", num_classes=10, img_size=32)``.

``timm/<name>`` builds a timm model behind the same contract when timm is installed
(``vitsam.models.timm_adapter``); ``list_models`` lists only our own.

Each registered function names a model class and returns that model's defaults; any
constructor argument of the class can be overridden through ``create_model`` keywords.
The paper's configurations (its model table) are registered with their ImageNet
sizes; the ``*_tiny`` variants are sized for 28x28 Fashion-MNIST on a laptop CPU.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from vitsam.errors import VitsamError, unknown_choice
from vitsam.models.base import VisionModel
from vitsam.models.mixer import MlpMixer
from vitsam.models.resnet import ResNet
from vitsam.models.vit import VisionTransformer


@dataclass(frozen=True)
class ModelEntry:
    cls: type[VisionModel]
    defaults: Callable[[], dict]

    def keywords(self) -> list[str]:
        params = inspect.signature(self.cls.__init__).parameters
        return [name for name in params if name != "self"]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(cls: type[VisionModel]):
    """Decorator: register ``fn() -> defaults`` as a model of class ``cls`` named ``fn.__name__``."""
    def wrap(fn: Callable[[], dict]) -> Callable[[], dict]:
        _REGISTRY[fn.__name__] = ModelEntry(cls, fn)
        return fn
    return wrap


TIMM_PREFIX = "timm/"


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_model_name(name: str) -> bool:
    """A registered name or ``timm/<name>`` (checked against timm when the model is built)."""
    return name in _REGISTRY or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def _unknown(name: str) -> VitsamError:
    err = unknown_choice("model", name, _REGISTRY)
    return VitsamError(f"{err}; or {TIMM_PREFIX}<name> for a timm model")


def model_class(name: str) -> type[VisionModel]:
    """The class a registered name builds."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name].cls


def create_model(name: str, num_classes: int | None = None, img_size: int | None = None,
                 in_chans: int | None = None, **overrides) -> VisionModel:
    """Build a registered model. ``num_classes`` / ``img_size`` / ``in_chans`` left at None
    take the model's defaults: 1000 / 224 / 3 for the paper's models, 10 / 28 / 1 for
    the tiny ones. Other keywords override constructor arguments (``drop_path_rate``,
    ``patch_size``, ``depth``, ...); unknown ones are rejected with the valid list.
    ``timm/<name>`` hands them to ``timm.create_model``."""
    if name.startswith(TIMM_PREFIX):
        from vitsam.models.timm_adapter import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], num_classes, img_size, in_chans, **overrides)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise _unknown(name)
    valid = entry.keywords()
    for key in overrides:
        if key not in valid:
            raise unknown_choice(f"keyword for model {name!r}", key, valid)
    given = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans}
    kwargs = {**entry.defaults(), **{k: v for k, v in given.items() if v is not None}, **overrides}
    try:
        return entry.cls(**kwargs)
    except (TypeError, ValueError) as err:  # e.g. a string where a number belongs
        raise VitsamError(f"cannot build model {name!r} with {overrides}: {err}") from None


# --------------------------------------------------------------------------- the paper's models
# The paper's model table; parameter counts at 224 px, 1000 classes, in the docstrings.

def _vit_s(patch_size: int) -> dict:
    return dict(patch_size=patch_size, width=384, depth=12, num_heads=6, mlp_dim=1536)


def _vit_b(patch_size: int) -> dict:
    return dict(patch_size=patch_size, width=768, depth=12, num_heads=12, mlp_dim=3072)


@register_model(VisionTransformer)
def vit_s32():
    """ViT-S/32, 23M."""
    return _vit_s(32)


@register_model(VisionTransformer)
def vit_s16():
    """ViT-S/16, 22M."""
    return _vit_s(16)


@register_model(VisionTransformer)
def vit_s14():
    """ViT-S/14, 22M."""
    return _vit_s(14)


@register_model(VisionTransformer)
def vit_s8():
    """ViT-S/8, 22M."""
    return _vit_s(8)


@register_model(VisionTransformer)
def vit_b32():
    """ViT-B/32, 88M."""
    return _vit_b(32)


@register_model(VisionTransformer)
def vit_b16():
    """ViT-B/16, 87M."""
    return _vit_b(16)


def _mixer_s(patch_size: int) -> dict:
    return dict(patch_size=patch_size, width=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048)


def _mixer_b(patch_size: int) -> dict:
    return dict(patch_size=patch_size, width=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072)


@register_model(MlpMixer)
def mixer_s32():
    """Mixer-S/32, 19M."""
    return _mixer_s(32)


@register_model(MlpMixer)
def mixer_s16():
    """Mixer-S/16, 18M."""
    return _mixer_s(16)


@register_model(MlpMixer)
def mixer_s8():
    """Mixer-S/8, 20M."""
    return _mixer_s(8)


@register_model(MlpMixer)
def mixer_b32():
    """Mixer-B/32, 60M."""
    return _mixer_b(32)


@register_model(MlpMixer)
def mixer_b16():
    """Mixer-B/16, 59M."""
    return _mixer_b(16)


@register_model(MlpMixer)
def mixer_b8():
    """Mixer-B/8, 64M."""
    return _mixer_b(8)


def _resnet(layers: tuple, width_factor: int = 1) -> dict:
    return dict(block="bottleneck", layers=layers, width_factor=width_factor)


@register_model(ResNet)
def resnet50():
    """ResNet-50, 25M."""
    return _resnet((3, 4, 6, 3))


@register_model(ResNet)
def resnet101():
    """ResNet-101, 44M."""
    return _resnet((3, 4, 23, 3))


@register_model(ResNet)
def resnet152():
    """ResNet-152, 60M."""
    return _resnet((3, 8, 36, 3))


@register_model(ResNet)
def resnet50x2():
    """ResNet-50x2, 98M."""
    return _resnet((3, 4, 6, 3), 2)


@register_model(ResNet)
def resnet101x2():
    """ResNet-101x2, 173M."""
    return _resnet((3, 4, 23, 3), 2)


@register_model(ResNet)
def resnet152x2():
    """ResNet-152x2, 236M."""
    return _resnet((3, 8, 36, 3), 2)


# --------------------------------------------------------------------------- tiny variants
# 28x28 grayscale, 10 classes (Fashion-MNIST), sized for a 2-core CPU: each reaches
# 85-87% test accuracy in 1.5-2 epochs (about a minute). 7x7 patches (16 tokens) learn
# more per CPU-second than 4x4 ones (49 tokens); pass patch_size=4 for finer attention maps.
_SMALL_IMAGES = dict(num_classes=10, img_size=28, in_chans=1)


@register_model(VisionTransformer)
def vit_tiny():
    """ViT with 7x7 patches: 16 tokens + class token, width 64, 4 blocks of 4 heads."""
    return dict(_SMALL_IMAGES, patch_size=7, width=64, depth=4, num_heads=4, mlp_dim=128)


@register_model(MlpMixer)
def mixer_tiny():
    """Mixer with 7x7 patches: 16 tokens, width 64, 4 blocks."""
    return dict(_SMALL_IMAGES, patch_size=7, width=64, depth=4, tokens_mlp_dim=64, channels_mlp_dim=128)


@register_model(ResNet)
def resnet_tiny():
    """CIFAR-style ResNet: 3x3 stem without max-pool, one basic block per stage of width 16/32/64."""
    return dict(_SMALL_IMAGES, block="basic", layers=(1, 1, 1), widths=(16, 32, 64), stem="cifar")
