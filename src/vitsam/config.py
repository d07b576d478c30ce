"""Typed configuration: one dataclass per component, nested in ``Config``.

A ``Config`` is built from a preset (``vitsam.presets``: configs as small Python
functions, big_vision style), then a config file (TOML or JSON, nested tables mirroring
the dataclasses) and ``key=value`` overrides with dotted keys (``optim.lr=1e-3``,
``sam.rho=0.1``). Unknown keys and bad values are rejected with the valid choices; the
resolved config is saved in every run directory and checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vitsam.errors import VitsamError, unknown_choice
from vitsam.jsonfile import write_json


# One source for every choice list: a Literal here is what validation, the CLI help and
# error messages read (``choices(Config, "optim.name")``); registries that grow by
# registration (models, presets, evaluators, data set kinds) are their own source.
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["fp32", "bf16", "fp16"]
SAMVariant = Literal["sam", "gsam", "looksam"]
Perturbation = Literal["per_rank", "global"]
ObjectiveName = Literal["classification", "adversarial", "contrastive"]
OnNonFinite = Literal["stop", "skip"]
AttackNorm = Literal["linf", "l2"]
Trainable = Literal["all", "head"]


@dataclass
class ModelConfig:
    name: str = "vit_tiny"           # a name from vitsam.models.list_models()
    overrides: dict = field(default_factory=dict)  # keyword overrides for create_model
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_from: str = ""              # start from these weights (a run directory or a weights file):
                                     # transfer / fine-tuning; a head of another class count is new


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"   # fashion_mnist | cifar10:/path | cifar100:/path | folder:/path | arrays:/path
    data_dir: str = ""               # overrides the default location of a named data set
    img_size: int = 28               # model input size after crop
    train_fraction: float = 1.0      # class-balanced subset (the paper's 1/2, 1/4, 1/10 study, Table 4)
    subset_seed: int = 0
    val_fraction: float = 0.0        # class-balanced share of the training images held out as a
                                     # validation split (for choosing hyperparameters, never the test set)
    crop_scale: tuple = (0.08, 1.0)  # Inception-style random resized crop scale range
    crop_ratio: tuple = (3 / 4, 4 / 3)
    hflip: bool = True
    eval_crop_fraction: float = 0.875  # eval: resize to img_size / fraction, center crop img_size
    num_workers: int = 0             # loader worker processes (folder data sets)


@dataclass
class AugmentConfig:
    """Strong augmentation, the paper's "AUG" baseline: RandAugment (Cubuk et al. 2020) then
    mixup (Zhang et al. 2018) on batched tensors (``vitsam.data.augment``), drawn once per
    step so both SAM passes see the same batch. Off by default: the paper's own recipe is
    Inception crop + flip only. The AUG presets use AugReg's "medium2" setting for ViT-B/16
    (Steiner et al. 2021, "How to train your ViT"; big_vision ``configs/vit_i1k.py``):
    RandAugment(2, 15) and mixup with concentration 0.5."""
    randaugment_layers: int = 0          # N: operations per image; 0 disables (AUG: 2)
    randaugment_magnitude: float = 15.0  # M on the 0..10 level scale of the TF RandAugment big_vision
                                         # uses (values above 10 strengthen the operations further)
    mixup_alpha: float = 0.0             # Beta(alpha, alpha) mixing weight, one draw per batch; 0 disables (AUG: 0.5)


@dataclass
class OptimConfig:
    name: Optimizer = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.3
    betas: tuple = (0.9, 0.999)
    momentum: float = 0.9            # sgd
    nesterov: bool = False
    warmup_steps: int = 0
    warmup_fraction: float = 0.0     # used when warmup_steps == 0
    schedule: Schedule = "linear"    # after warmup
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0           # global-norm clipping; 0 disables


@dataclass
class SAMConfig:
    rho: float = 0.0                 # 0 disables SAM (the base optimizer alone)
    variant: SAMVariant = "sam"
    adaptive: bool = False           # ASAM: T = |w| + eta
    eta: float = 0.01                # ASAM's eta (Kwon et al. 2021); > 0 so zero-initialized weights move too
    eps: float = 1e-12
    perturbation: Perturbation = "per_rank"  # per_rank (m-sharpness, the paper) | global (all-reduced g) under DDP
    gsam_alpha: float = 0.2          # GSAM: weight of the orthogonal (surrogate-gap) term
    rho_min: float = 0.0             # GSAM: rho follows the lr schedule from rho_min to rho
    looksam_alpha: float = 0.7       # LookSAM: weight of the reused orthogonal component (Liu et al. 2022)
    k: int = 5                       # LookSAM: a full SAM step every k steps


@dataclass
class AdversarialConfig:
    """Adversarial training (objective "adversarial"): PGD examples in the inner loop."""
    eps: float = 4 / 255             # radius in [0, 1] pixel units
    steps: int = 3                   # PGD steps while training (evaluation uses PGD-10)
    step_size: float = 0.0           # 0: 2.5 * eps / steps (Madry et al. 2018)
    norm: AttackNorm = "linf"        # the ball of the attack (and of the eps-ball the examples lie in)


@dataclass
class ContrastiveConfig:
    """Contrastive pre-training (objective "contrastive"): MoCo v3 (Chen, Xie, He 2021, "An
    Empirical Study of Training Self-Supervised Vision Transformers"), their ViT settings."""
    temperature: float = 0.2
    momentum: float = 0.99           # momentum encoder's moving-average coefficient at the start,
                                     # raised to 1 along a half cosine over the run
    projection_dim: int = 256
    hidden_dim: int = 4096           # hidden width of the projection (3 layers) and prediction (2 layers) MLPs
    crop_scale: tuple = (0.08, 1.0)  # each view's random resized crop (area fraction of the loader's image)


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 128
    eval_batch_size: int = 512
    objective: ObjectiveName = "classification"
    trainable: Trainable = "all"     # "head": a linear probe (everything but the head frozen)
    label_smoothing: float = 0.0
    precision: Precision = "fp32"    # fp16 uses a gradient scaler
    accumulation_steps: int = 1      # micro-batches per optimizer step (batch_size is the whole batch)
    seed: int = 0
    log_every: int = 50
    eval_every_epochs: float = 1.0
    checkpoint_every: int = 0        # steps; 0 = at each epoch end and at the end
    stop_after_steps: int = 0        # stop (with a checkpoint) after this many steps; 0 = run to the end
    on_nonfinite: OnNonFinite = "stop"  # a non-finite loss or gradient: stop the run, or skip the step
    max_skipped_steps: int = 10      # on_nonfinite=skip: stop after this many skipped steps in a row
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    progress: bool = True
    threads: int = 0                 # torch intra-op threads; 0 = torch default
    compile: bool = False            # torch.compile the model + loss (vitsam.models.compilation): 2-15% faster
                                     # tiny-model steps on CPU after 0.5-3 min of compiling; for large models on a GPU


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sam: SAMConfig = field(default_factory=SAMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    # evaluators run during training: name -> {"every_epochs": x, <evaluator options>}
    evals: dict = field(default_factory=dict)
    name: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choices(cls, dotted: str) -> tuple:
    """The valid values of a Literal field, e.g. ``choices(Config, "optim.name")``."""
    *path, key = dotted.split(".")
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_args(typing.get_type_hints(cls)[key])


# --------------------------------------------------------------------------- dict <-> dataclass

def from_dict(data: dict, cls=Config, where: str = "config"):
    """Build a dataclass from a (possibly partial) nested dict, rejecting unknown keys."""
    obj = cls()
    return merge(obj, data, where)


def merge(obj, data: dict, where: str = "config"):
    if not isinstance(data, dict):
        raise VitsamError(f"{where}: expected a table of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        if key not in fields:
            raise unknown_choice(f"key in {where}", key, fields)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], current, f"{where}.{key}"))
    return obj


def _coerce(value, hint, current, where: str):
    """Convert a value parsed from TOML/JSON/the command line to the field's type."""
    origin = typing.get_origin(hint) or hint
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise unknown_choice(where, value, typing.get_args(hint))
        return value
    try:
        if origin is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if origin in (int, float, str):
            if origin is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return origin(value)
        if origin is tuple:
            if isinstance(value, str):
                value = json.loads(value if value.startswith("[") else f"[{value}]")
            out = tuple(value)
            if current is not None and len(out) != len(current):
                raise ValueError
            return tuple(type(c)(v) for c, v in zip(current, out)) if current else out
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise VitsamError(f"{where}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def parse_override(text: str) -> dict:
    """'optim.lr=1e-3' -> {'optim': {'lr': 1e-3}} (values parsed as JSON when possible)."""
    if "=" not in text:
        raise VitsamError(f"override {text!r} must look like key=value, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VitsamError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise VitsamError(f"config file {str(path)!r} is not valid: {err}") from None
    raise VitsamError(f"config file {str(path)!r}: use a .toml or .json file")


def validate(cfg: Config) -> None:
    """What types alone cannot say (Literal choices are checked when values are merged)."""
    if cfg.sam.rho < 0:
        raise VitsamError(f"sam.rho must be >= 0, got {cfg.sam.rho}")
    if not 0 < cfg.data.train_fraction <= 1:
        raise VitsamError(f"data.train_fraction must be in (0, 1], got {cfg.data.train_fraction}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise VitsamError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.train.accumulation_steps < 1:
        raise VitsamError(f"train.accumulation_steps must be >= 1, got {cfg.train.accumulation_steps}")
    if cfg.train.batch_size <= 0 or cfg.train.epochs <= 0:
        raise VitsamError("train.batch_size and train.epochs must be positive")
    for name in cfg.evals:
        if not isinstance(cfg.evals[name], dict):
            raise VitsamError(f"evals.{name} must be a table of options, got {cfg.evals[name]!r}")
    from vitsam.models import list_models  # late import: models import torch
    if cfg.model.name not in list_models() and not cfg.model.name.startswith("timm/"):
        raise unknown_choice("model", cfg.model.name, list_models())


def save(cfg: Config, path: str | Path) -> None:
    write_json(cfg.to_dict(), path)


def load(path: str | Path) -> Config:
    return from_dict(json.loads(Path(path).read_text()), where=str(path))
