"""Training presets: configs as small Python functions (big_vision style).

`vitsam presets` lists them; `vitsam train --preset NAME --set key=value` starts from one.
The paper's ImageNet recipes (PAPER.md, "Training recipe") come first, then the small
Fashion-MNIST ones the demo uses, then `smoke`, the tiny run the tests use.
"""
from __future__ import annotations

from vitsam.config import Config, DataConfig, ModelConfig, OptimConfig, SAMConfig, TrainConfig, preset

# SAM radius per paper model. PAPER.md (approx.): about 0.2 for ViT-B/16, 0.5-0.6 for
# Mixer-B/16, 0.02-0.05 for ResNets; the other entries are our interpolation by model
# size, not the authors' values. The paper perturbs per accelerator (m-sharpness, 64
# chips): with fewer devices a larger rho is needed to match.
PAPER_RHO = {
    "vit_s32": 0.05, "vit_s16": 0.1, "vit_s14": 0.1, "vit_s8": 0.15, "vit_b32": 0.15, "vit_b16": 0.2,
    "mixer_s32": 0.1, "mixer_s16": 0.15, "mixer_s8": 0.2, "mixer_b32": 0.35, "mixer_b16": 0.6, "mixer_b8": 0.6,
    "resnet50": 0.05, "resnet101": 0.05, "resnet152": 0.05,
    "resnet50x2": 0.05, "resnet101x2": 0.05, "resnet152x2": 0.05,
}


def imagenet(model: str, sam: bool) -> Config:
    """The paper's ImageNet recipe: Inception crop + flip only, 224 px, batch 4096."""
    data = DataConfig(dataset="folder:/path/to/imagenet", img_size=224, crop_scale=(0.08, 1.0),
                      eval_crop_fraction=0.875, num_workers=8)
    if model.startswith("resnet"):
        # SGD with momentum, lr 1.6 at batch 4096, 90 epochs, 5k warmup steps, linear decay.
        optim = OptimConfig(name="sgd", lr=1.6, weight_decay=1e-4, momentum=0.9, warmup_steps=5000,
                            schedule="linear", grad_clip=0.0)
        train = TrainConfig(epochs=90, batch_size=4096, eval_batch_size=1024, label_smoothing=0.1,
                            precision="bf16", log_every=100)
    else:
        # AdamW, lr 3e-3, wd 0.3, 300 epochs, 10k warmup steps, linear decay, clip at norm 1.
        optim = OptimConfig(name="adamw", lr=3e-3, weight_decay=0.3, warmup_steps=10_000,
                            schedule="linear", grad_clip=1.0)
        train = TrainConfig(epochs=300, batch_size=4096, eval_batch_size=1024, precision="bf16",
                            log_every=100)
    return Config(model=ModelConfig(name=model), data=data, optim=optim,
                  sam=SAMConfig(rho=PAPER_RHO[model] if sam else 0.0), train=train)


def _register(name: str, doc: str, make) -> None:
    make.__name__, make.__doc__ = name, doc
    preset(make)


for _model in PAPER_RHO:
    _register(f"{_model}_imagenet", f"{_model} on ImageNet (folder:PATH), the paper's recipe, vanilla",
              lambda m=_model: imagenet(m, sam=False))
    _register(f"{_model}_imagenet_sam", f"{_model} on ImageNet (folder:PATH), the paper's recipe, "
              f"SAM rho={PAPER_RHO[_model]}", lambda m=_model: imagenet(m, sam=True))


# --------------------------------------------------------------------------- Fashion-MNIST



# Epochs for >= 85% test accuracy with and without SAM in 1-2 minutes (base) on 2 CPU cores.
FMNIST_EPOCHS = {"vit": 4.0, "mixer": 3.0, "resnet": 1.5}
FMNIST_RHO = {"vit": 0.05, "mixer": 0.05, "resnet": 0.05}


def fmnist(family: str, sam: bool = False) -> Config:
    """A small model of `family` on 28x28 Fashion-MNIST, sized for a 2-core CPU.
    Augmentation is the horizontal flip alone: the paper's Inception crop is made for 300
    epochs of 224 px ImageNet; in a few epochs of 28 px clothing any crop costs accuracy
    (measured: vit_tiny + SAM, 3 epochs, crop scale 0.8-1: 83.1%)."""
    epochs = FMNIST_EPOCHS[family]
    data = DataConfig(dataset="fashion_mnist", img_size=28, crop_scale=(1.0, 1.0), eval_crop_fraction=1.0)
    if family == "resnet":
        optim = OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True,
                            warmup_fraction=0.05, schedule="cosine", grad_clip=0.0)
    else:
        optim = OptimConfig(name="adamw", lr=3e-3 if family == "vit" else 4e-3, weight_decay=0.05,
                            warmup_fraction=0.05, schedule="cosine", grad_clip=1.0)
    train = TrainConfig(epochs=epochs, batch_size=128, eval_batch_size=1000, log_every=50, threads=0)
    return Config(model=ModelConfig(name=f"{family}_tiny"), data=data, optim=optim,
                  sam=SAMConfig(rho=FMNIST_RHO[family] if sam else 0.0), train=train)


BASE_OPTIMIZER = {"vit": "AdamW", "mixer": "AdamW", "resnet": "SGD with momentum"}
for _family in FMNIST_RHO:
    _register(f"{_family}_tiny_fmnist", f"{_family}_tiny on Fashion-MNIST, {BASE_OPTIMIZER[_family]} "
              f"(the demo's vanilla {_family})", lambda f=_family: fmnist(f))
    _register(f"{_family}_tiny_fmnist_sam", f"{_family}_tiny on Fashion-MNIST, {BASE_OPTIMIZER[_family]} + "
              f"SAM rho={FMNIST_RHO[_family]}", lambda f=_family: fmnist(f, sam=True))


@preset
def smoke() -> Config:
    """A seconds-long run on 2% of Fashion-MNIST (tests, a first look)"""
    cfg = fmnist("vit")
    cfg.train.epochs = 1.0
    cfg.data.train_fraction = 0.02
    cfg.train.batch_size = 64
    cfg.train.log_every = 5
    cfg.train.progress = False
    cfg.model.overrides = {"depth": 2}
    return cfg
