"""Presets for the paper's other experiments, at ImageNet scale (the paper's recipe, the
data path from the user: ``data.dataset=folder:/path``) and on Fashion-MNIST (a 2-core CPU).

Names extend the base presets of ``vitsam.presets`` (``vit_b16_imagenet``,
``vit_tiny_fmnist``, each with ``_sam``):

- ``<base>_aug`` / ``<base>_aug_sam``: the "AUG" baseline of the paper's "SAM vs. strong
  augmentations" table, RandAugment + mixup on top of the base recipe;
- ``<base>_adv`` / ``<base>_adv_sam``: adversarial training (PGD in the inner loop), the
  paper's adversarial-training table;
- ``<vit>_moco`` / ``<vit>_moco_sam``: MoCo v3 contrastive pre-training; ``<vit>_probe``
  (linear probe) and ``<vit>_finetune`` evaluate a pre-trained run (set ``model.init_from``);
- ``<base>_transfer``: fine-tuning a trained run on another data set and resolution (set
  ``model.init_from`` and ``data.dataset``).

Where the paper does not state a setting, the source of ours is named beside it.
"""
from __future__ import annotations

from typing import Callable

from vitsam.config import AugmentConfig, Config, OptimConfig
from vitsam.paper import family_of as family
from vitsam.presets import FMNIST_RHO, PAPER_RHO, fmnist, imagenet, preset

# AugReg's "medium2" (Steiner et al. 2021; big_vision configs/vit_i1k.py, their choice for
# ViT-B/16 at 300 epochs): the strong-augmentation recipe the paper's AUG baseline stands for.
AUG_IMAGENET = AugmentConfig(randaugment_layers=2, randaugment_magnitude=15.0, mixup_alpha=0.5)
# AugReg's "light2" (RandAugment(2, 10), mixup 0.2): their choice for small models and short
# schedules (S/32), which a tiny model's few epochs on Fashion-MNIST are.
AUG_SMALL = AugmentConfig(randaugment_layers=2, randaugment_magnitude=10.0, mixup_alpha=0.2)

# The models each ImageNet-scale table uses (the paper's rows).
DATA_EFFICIENCY_MODELS = ("resnet152", "vit_b16", "mixer_b16")
ADVERSARIAL_MODELS = ("resnet50", "resnet101", "resnet152", "vit_s16", "vit_b32", "vit_b16",
                      "mixer_s16", "mixer_b32", "mixer_b16")
CONTRASTIVE_MODELS = ("vit_s16", "vit_b16")
TRANSFER_MODELS = ("resnet152", "vit_b16", "mixer_b16")
SMALL_MODELS = ("vit_tiny", "mixer_tiny", "resnet_tiny")


def base(model: str, sam: bool) -> Config:
    """The plain recipe of ``model``: the paper's ImageNet one, or the Fashion-MNIST one
    for the ``*_tiny`` models."""
    if model.endswith("_tiny"):
        return fmnist(model.removesuffix("_tiny"), sam=sam)
    return imagenet(model, sam=sam)


def small(model: str) -> bool:
    return model.endswith("_tiny")


# --------------------------------------------------------------------------- AUG

def with_aug(model: str, sam: bool) -> Config:
    cfg = base(model, sam)
    cfg.augment = AugmentConfig(**vars(AUG_SMALL if small(model) else AUG_IMAGENET))
    return cfg


# --------------------------------------------------------------------------- adversarial

def adversarial(model: str, sam: bool) -> Config:
    """PGD adversarial training on the base recipe. The paper does not state its attack
    settings in our copy; ours: L-inf, eps 4/255 on ImageNet (the usual ImageNet radius),
    3 steps of 2.5 eps / 3 while training (Madry et al. 2018's step rule), PGD-10 at the
    same eps for evaluation. Fashion-MNIST: eps 8/255 (its 28 px images carry less
    detail per pixel), 3 steps."""
    cfg = base(model, sam)
    cfg.train.objective = "adversarial"
    cfg.adversarial.eps = (4 if not small(model) else 8) / 255
    cfg.adversarial.steps = 3
    return cfg


# --------------------------------------------------------------------------- contrastive

# The small contrastive table trains on a quarter of Fashion-MNIST (13,500 images): the
# Fashion-MNIST presets' 1% (the demo's regime) gives MoCo 10 steps, a smoke test.
SMALL_CONTRASTIVE_FRACTION = 0.25


def moco(model: str, sam: bool) -> Config:
    """MoCo v3 pre-training (Chen, Xie, He 2021, their ViT recipe: AdamW lr 1.5e-4 x
    batch / 256, weight decay 0.1, batch 4096, 300 epochs, 40 warmup epochs, cosine,
    temperature 0.2, momentum 0.99 -> 1); the loader's crop is the whole image and each
    view crops it. Fashion-MNIST: a quarter of the images, batch 256, lr 1.5e-3, 5 epochs, small heads,
    crops of 20-100% of the image (MoCo v2's range; 8% leaves little of a 28 px image)."""
    cfg = base(model, sam)
    cfg.train.objective = "contrastive"
    cfg.data.crop_scale = (1.0, 1.0)
    cfg.data.hflip = False                    # each view flips on its own
    if small(model):
        cfg.optim = OptimConfig(name="adamw", lr=1.5e-3, weight_decay=0.1, warmup_fraction=0.1,
                                schedule="cosine", grad_clip=1.0)
        cfg.train.epochs, cfg.train.batch_size = 5.0, 256
        cfg.contrastive.hidden_dim, cfg.contrastive.projection_dim = 256, 64
        cfg.contrastive.crop_scale = (0.2, 1.0)
        cfg.data.train_fraction = SMALL_CONTRASTIVE_FRACTION
    else:
        cfg.optim = OptimConfig(name="adamw", lr=1.5e-4 * 4096 / 256, weight_decay=0.1, warmup_fraction=40 / 300,
                                schedule="cosine", grad_clip=0.0)
        cfg.train.epochs = 300.0
    return cfg


def probe(model: str) -> Config:
    """Linear probe of a pre-trained run (``train.trainable=head``; set ``model.init_from``).
    MoCo v3's linear classification uses SGD (lr 0.1 x batch / 256 at batch 4096, momentum
    0.9, no weight decay, 90 epochs, cosine); Fashion-MNIST: 5 epochs at batch 256."""
    cfg = base(model, sam=False)
    cfg.train.trainable = "head"
    batch = 256 if small(model) else 4096
    cfg.optim = OptimConfig(name="sgd", lr=0.1 * batch / 256, weight_decay=0.0, momentum=0.9,
                            schedule="cosine", grad_clip=0.0)
    cfg.train.epochs, cfg.train.batch_size = (5.0 if small(model) else 90.0), batch
    if small(model):
        cfg.data.train_fraction = SMALL_CONTRASTIVE_FRACTION
    return cfg


def finetune(model: str) -> Config:
    """End-to-end fine-tuning of a pre-trained run (set ``model.init_from``): the base
    recipe from the pre-trained weights. MoCo v3 fine-tunes ViTs with DeiT's recipe for
    100-150 epochs; ours keeps the paper's own recipe, shortened (ImageNet: 100 epochs;
    Fashion-MNIST: 3 epochs at a third of the learning rate)."""
    cfg = base(model, sam=False)
    if small(model):
        cfg.train.epochs, cfg.optim.lr = 3.0, cfg.optim.lr / 3
        cfg.data.train_fraction = SMALL_CONTRASTIVE_FRACTION
    else:
        cfg.train.epochs = 100.0
    return cfg


# --------------------------------------------------------------------------- transfer

# Image side of the transfer target: ViT at a new resolution (its position embeddings are
# interpolated), Mixer at the source's token count (its token-mixing MLP needs it).
TRANSFER_SIZE = {"vit": (384, 42), "mixer": (224, 28), "resnet": (384, 42)}


def transfer(model: str) -> Config:
    """Fine-tuning a trained run on another data set and resolution (set ``model.init_from``
    and the target ``data.dataset``). The ViT paper's transfer recipe (Dosovitskiy et al.
    2021, Appendix B.1.1): SGD with momentum 0.9, no weight decay, gradient clipping at 1,
    batch 512, cosine decay, 500 warmup steps, 10k steps (about 100 epochs of CIFAR's 50k
    images) at 384 px. Fashion-MNIST stands in for the target at 42 px (a 6 x 6 patch grid
    for the 4 x 4 one the tiny ViT was trained on) on a 1/10 subset, 5 epochs."""
    cfg = base(model, sam=False)
    large, tiny = TRANSFER_SIZE[family(model)]
    cfg.optim = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, momentum=0.9, warmup_fraction=0.05,
                            schedule="cosine", grad_clip=1.0)
    if small(model):
        cfg.data.img_size, cfg.data.train_fraction = tiny, 0.1
        cfg.train.epochs, cfg.train.batch_size = 5.0, 64
    else:
        cfg.data.dataset, cfg.data.img_size = "cifar10:/path/to/cifar10", large
        cfg.data.crop_scale, cfg.data.eval_crop_fraction = (0.08, 1.0), 1.0
        cfg.optim.warmup_fraction, cfg.optim.warmup_steps = 0.0, 500
        cfg.train.epochs, cfg.train.batch_size = 100.0, 512
    return cfg


# --------------------------------------------------------------------------- registration

def _register(name: str, doc: str, make: Callable[[], Config]) -> None:
    make.__name__, make.__doc__ = name, doc
    preset(make)


def _base_name(model: str) -> str:
    return f"{model}_fmnist" if small(model) else f"{model}_imagenet"


def _rho(model: str) -> float:
    return FMNIST_RHO[family(model)] if small(model) else PAPER_RHO[model]


def register_all() -> None:
    for model in sorted(set(DATA_EFFICIENCY_MODELS) | set(SMALL_MODELS)):
        name = _base_name(model)
        _register(f"{name}_aug", f"{model}: AUG (RandAugment + mixup), the paper's augmentations table",
                  lambda m=model: with_aug(m, sam=False))
        _register(f"{name}_aug_sam", f"{model}: SAM rho={_rho(model)} + AUG, the paper's augmentations table",
                  lambda m=model: with_aug(m, sam=True))
    for model in sorted(set(ADVERSARIAL_MODELS) | set(SMALL_MODELS)):
        name = _base_name(model)
        _register(f"{name}_adv", f"{model}: adversarial training (PGD), the paper's adversarial table",
                  lambda m=model: adversarial(m, sam=False))
        _register(f"{name}_adv_sam", f"{model}: adversarial training + SAM rho={_rho(model)}",
                  lambda m=model: adversarial(m, sam=True))
    for model in CONTRASTIVE_MODELS + ("vit_tiny",):
        name = _base_name(model)
        _register(f"{name}_moco", f"{model}: MoCo v3 contrastive pre-training",
                  lambda m=model: moco(m, sam=False))
        _register(f"{name}_moco_sam", f"{model}: MoCo v3 contrastive pre-training + SAM rho={_rho(model)}",
                  lambda m=model: moco(m, sam=True))
        _register(f"{name}_probe", f"{model}: linear probe of a pre-trained run (set model.init_from)",
                  lambda m=model: probe(m))
        _register(f"{name}_finetune", f"{model}: fine-tuning of a pre-trained run (set model.init_from)",
                  lambda m=model: finetune(m))
    for model in TRANSFER_MODELS + SMALL_MODELS:
        _register(f"{_base_name(model)}_transfer", f"{model}: transfer of a trained run to another data set and "
                  f"resolution (set model.init_from, data.dataset)", lambda m=model: transfer(m))


register_all()
