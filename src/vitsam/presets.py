"""Training presets: configs as small Python functions (big_vision style), and ``resolve``,
which turns a preset, a config file and overrides into a validated ``Config``.

`vitsam presets` lists them; `vitsam train --preset NAME --set key=value` starts from one.
The paper's ImageNet recipes (the paper's Sec. 2 / Appendix, docs/paper.md "Training
recipe") come first, then the small Fashion-MNIST ones the demo uses, then `smoke`, the
tiny run the tests use. ``runlocal(cfg)`` shrinks ANY config to a seconds-long run on a
sliver of Fashion-MNIST with the same recipe (big_vision's ``runlocal`` variant): what
the tests run for every preset, and ``vitsam train --runlocal`` for a first look.
"""
from __future__ import annotations

from typing import Callable

from vitsam.config import (Config, DataConfig, ModelConfig, OptimConfig, SAMConfig, TrainConfig, load_file,
                           merge, parse_override, validate)
from vitsam.errors import unknown_choice

PRESETS: dict[str, Callable[[], Config]] = {}


def preset(fn: Callable[[], Config]) -> Callable[[], Config]:
    """Register ``fn`` (its docstring's first line is the description) as a preset."""
    PRESETS[fn.__name__] = fn
    return fn


def list_presets() -> dict[str, Callable[[], Config]]:
    return dict(sorted(PRESETS.items()))


def describe(name: str) -> str:
    doc = PRESETS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise unknown_choice("preset", name, sorted(PRESETS))
    cfg = PRESETS[name]()
    cfg.name = cfg.name or name
    return cfg


def resolve(preset_name: str, config_file: str | None = None, overrides=(), local: bool = False) -> Config:
    """preset -> config file -> ``key=value`` overrides (later wins) -> validated Config;
    ``local`` applies ``runlocal`` after the preset (overrides still win)."""
    cfg = get_preset(preset_name)
    if local:
        cfg = runlocal(cfg)
    if config_file:
        merge(cfg, load_file(config_file), f"config file {config_file}")
    for text in overrides:
        merge(cfg, parse_override(text), f"override {text!r}")
    validate(cfg)
    return cfg

# SAM radius per paper model: about 0.2 for ViT-B/16, 0.5-0.6 for Mixer-B/16, 0.02-0.05
# for ResNets (the authors' released configurations, approximate; docs/paper.md); the
# other entries are our interpolation by model size, not the authors' values. The paper perturbs per accelerator (m-sharpness, 64
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


# The demo's regime, from the calibration study (docs/calibration.md; every configuration
# tried is in experiments/calibration_results.jsonl): 1% of the training images (540 after
# a 10% validation hold-out), trained to memorisation in 100 epochs (400 steps), flip only;
# rho chosen per family on validation accuracy (ViT 0.1 of 0.1/0.2/0.4, Mixer 0.5 of
# 0.2/0.5, ResNet 0.05 of 0.05/0.1). The paper's rho is also largest for Mixer (~0.5).
FMNIST_FRACTION, FMNIST_EPOCHS = 0.01, 100.0
FMNIST_RHO = {"vit": 0.1, "mixer": 0.5, "resnet": 0.05}


def fmnist(family: str, sam: bool = False) -> Config:
    """A small model of `family` on 28x28 Fashion-MNIST in the data-limited regime of the
    paper's data-efficiency study, sized for a 2-core CPU. Augmentation is the horizontal
    flip alone: on 28 px images a crop slows memorisation (docs/calibration.md)."""
    data = DataConfig(dataset="fashion_mnist", img_size=28, train_fraction=FMNIST_FRACTION, val_fraction=0.1,
                      crop_scale=(1.0, 1.0), eval_crop_fraction=1.0)
    if family == "resnet":
        optim = OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True,
                            warmup_fraction=0.05, schedule="cosine", grad_clip=0.0)
    else:
        optim = OptimConfig(name="adamw", lr=3e-3 if family == "vit" else 4e-3, weight_decay=0.05,
                            warmup_fraction=0.05, schedule="cosine", grad_clip=1.0)
    # one thread: on a shared 2-core machine two threads ran 0.06-0.09x as fast (bench_throughput.py);
    # an evaluation halfway (10k test + 6k validation images) and checkpoints every 25 epochs
    train = TrainConfig(epochs=FMNIST_EPOCHS, batch_size=128, eval_batch_size=1000, log_every=50, threads=1,
                        eval_every_epochs=50, checkpoint_every=100)
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
    cfg.train.epochs, cfg.train.eval_every_epochs, cfg.train.checkpoint_every = 1.0, 1.0, 0
    cfg.data.train_fraction, cfg.data.val_fraction = 0.02, 0.0
    cfg.train.batch_size = 64
    cfg.train.log_every = 5
    cfg.train.progress = False
    cfg.model.overrides = {"depth": 2}
    return cfg


# --------------------------------------------------------------------------- runlocal

# Per family: the smallest model of the same architecture (one block, a few channels)
TINY_MODEL = {
    "vit": dict(width=32, depth=1, num_heads=2, mlp_dim=64),
    "mixer": dict(width=32, depth=1, tokens_mlp_dim=16, channels_mlp_dim=64),
    "resnet": dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
}


def runlocal(cfg: Config) -> Config:
    """The same recipe (optimizer, SAM, objective, augmentation, precision) at toy size:
    a one-block model of the same family and patch size, 0.5% of Fashion-MNIST at 28 px
    (32 px when the patch size does not divide 28), 2 steps of batch 16."""
    import torch

    from vitsam.models import create_model

    with torch.device("meta"):  # shapes only: what family, which patch size
        model = create_model(cfg.model.name, **cfg.model.overrides)
    patch = getattr(model, "patch_size", None)
    if not cfg.model.name.endswith("_tiny"):
        cfg.model.overrides = {**cfg.model.overrides, **TINY_MODEL.get(model.family, {})}
    cfg.data = DataConfig(dataset="fashion_mnist", img_size=28 if patch is None or 28 % patch == 0 else 32,
                          train_fraction=0.005, crop_scale=cfg.data.crop_scale, crop_ratio=cfg.data.crop_ratio,
                          hflip=cfg.data.hflip, eval_crop_fraction=1.0)
    cfg.train.batch_size, cfg.train.eval_batch_size = 16, 500
    cfg.train.accumulation_steps = min(cfg.train.accumulation_steps, 2)
    cfg.train.stop_after_steps, cfg.train.log_every, cfg.train.progress = 2, 1, False
    cfg.train.threads, cfg.train.device = 1, "cpu"
    cfg.optim.warmup_steps = 0
    cfg.name = f"{cfg.name}_runlocal" if cfg.name else "runlocal"
    return cfg


# The paper's tables as experiments register their presets too (ImageNet scale and small).
import vitsam.experiments.presets  # noqa: E402,F401
