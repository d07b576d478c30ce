"""The training loop, readable top to bottom (nanoGPT style).

    config -> data -> model -> optimizer (base or SAM family) -> steps -> run directory

Exact resume: the loader's shuffle and augmentation depend only on (seed, epoch, step),
the checkpoint holds weights, optimizer (incl. the base optimizer's moments under SAM),
scheduler, fp16 loss scale and the global RNG (dropout / drop-path), so a run stopped at
step s and resumed ends with the same weights as one that never stopped.

Under torchrun every rank runs this loop on its shard of each batch (DDP; the SAM ascent
per rank unless ``sam.perturbation=global``); rank 0 alone logs, evaluates and writes
checkpoints, every rank resumes from them, also when torchrun restarts failed workers.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitsam import config as config_lib
from vitsam.config import Config
from vitsam.data import Loader
from vitsam.data.build import build_source
from vitsam.errors import VitsamError
from vitsam.models import create_model
from vitsam.optim import build_optimizer, build_scheduler
from vitsam.train import checkpoint as ckpt
from vitsam.train import distributed
from vitsam.train.metrics import MetricsLog, Progress, global_norm, parameter_norm
from vitsam.train.precision import AUTOCAST, loss_scaler
from vitsam.train.step import train_step


# --------------------------------------------------------------------------- building blocks

def build_loaders(cfg: Config, d: distributed.Dist):
    train_src, test_src = build_source(cfg.data, "train"), build_source(cfg.data, "test")
    common = dict(img_size=cfg.data.img_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers)
    train_loader = Loader(train_src, cfg.train.batch_size // d.world_size, train=True,
                          crop_scale=tuple(cfg.data.crop_scale), crop_ratio=tuple(cfg.data.crop_ratio),
                          hflip=cfg.data.hflip, rank=d.rank, world_size=d.world_size, **common)
    test_loader = Loader(test_src, cfg.train.eval_batch_size, train=False,
                         eval_crop_fraction=cfg.data.eval_crop_fraction, **common)
    return train_src, train_loader, test_loader


def check_batch_size(cfg: Config, d: distributed.Dist) -> None:
    """Each rank takes batch_size / world_size images, in accumulation_steps micro-batches."""
    k = cfg.train.accumulation_steps
    if k < 1 or cfg.train.batch_size % (d.world_size * k):
        raise VitsamError(f"train.batch_size={cfg.train.batch_size} must be a multiple of the world size "
                          f"({d.world_size}) times train.accumulation_steps ({k}, at least 1)")


def model_arguments(cfg: Config, source) -> dict:
    """What create_model needs to rebuild this run's model (saved as model.json)."""
    overrides = dict(cfg.model.overrides)
    for key in ("drop_rate", "drop_path_rate"):
        if getattr(cfg.model, key):
            overrides[key] = getattr(cfg.model, key)
    return {"name": cfg.model.name, "num_classes": source.num_classes, "img_size": cfg.data.img_size,
            "in_chans": source.in_chans, "overrides": overrides}


def build_model(args: dict) -> nn.Module:
    return create_model(args["name"], num_classes=args["num_classes"], img_size=args["img_size"],
                        in_chans=args["in_chans"], **args["overrides"])


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: torch.device, autocast_dtype=None) -> dict:
    """Top-1 accuracy and mean cross-entropy on a whole (un-augmented) split."""
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for images, labels in loader.iterate(0):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
    model.train(was_training)
    return {"accuracy": correct / max(count, 1), "loss": loss_sum / max(count, 1), "images": count}


@contextmanager
def autocast(device: torch.device, dtype):
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


@contextmanager
def stop_on_signals():
    """SIGINT / SIGTERM ask the loop to checkpoint and stop at the next step boundary."""
    requested = {"stop": False}

    def handler(signum, frame):
        requested["stop"] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the loop

def train(cfg: Config, out_dir: str | Path, resume: bool = False) -> Path:
    """Train `cfg` into run directory `out_dir`; with `resume`, continue from its checkpoint."""
    d = distributed.setup(cfg.train.device)
    try:
        return train_on(d, cfg, Path(out_dir), resume)
    finally:
        distributed.teardown(d)


def train_on(d: distributed.Dist, cfg: Config, run_dir: Path, resume: bool) -> Path:
    check_batch_size(cfg, d)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # torchrun restarts failed workers with the same arguments: continue, never start over.
    resume = resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    prepare_run_dir(run_dir, cfg, resume, d)

    torch.manual_seed(cfg.train.seed)
    train_src, train_loader, test_loader = build_loaders(cfg, d)
    args = model_arguments(cfg, train_src)
    model = build_model(args).to(d.device)
    optimizer = build_optimizer(model, cfg.optim, cfg.sam)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, round(cfg.train.epochs * steps_per_epoch))
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = loss_scaler(cfg.train.precision)  # fp16 only
    step = 0
    if resume and (run_dir / ckpt.CHECKPOINT).exists():
        step = restore(run_dir, model, optimizer, scheduler, scaler, d.device)
    if d.is_main:
        ckpt.atomic_write_json(args, run_dir / "model.json")
    log = MetricsLog(run_dir, enabled=d.is_main)
    log.truncate_after(step)

    net = DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None) \
        if d.enabled else model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    dtype = AUTOCAST[cfg.train.precision]
    step_options = dict(grad_clip=cfg.optim.grad_clip, autocast_dtype=dtype, scaler=scaler,
                        accumulation_steps=cfg.train.accumulation_steps)
    eval_every = max(1, round(cfg.train.eval_every_epochs * steps_per_epoch))
    progress = Progress(total_steps, cfg.name or cfg.model.name, enabled=cfg.train.progress and d.is_main)

    def save():
        if d.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step,
                     "config": cfg.to_dict()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            ckpt.atomic_torch_save(state, run_dir / ckpt.CHECKPOINT)
        distributed.barrier(d)

    def run_eval():
        if d.is_main:
            result = evaluate(model, test_loader, d.device, dtype)
            log.write("eval", step, epoch=step / steps_per_epoch, test_accuracy=result["accuracy"],
                      test_loss=result["loss"])
            return result
        return None

    net.train()
    seen, skipped, clock = 0, 0, time.perf_counter()
    with stop_on_signals() as signals:
        while step < total_steps:
            epoch, start = divmod(step, steps_per_epoch)
            for images, labels in train_loader.iterate(epoch, start):
                images, labels = images.to(d.device, non_blocking=True), labels.to(d.device, non_blocking=True)
                log_now = (step + 1) % cfg.train.log_every == 0 or step + 1 == total_steps
                before = [p.detach().clone() for p in model.parameters()] if log_now else None
                result = train_step(net, optimizer, loss_fn, images, labels, **step_options)
                scheduler.step()  # a skipped (fp16 overflow) step still counts: lr follows the step
                step += 1
                seen += labels.numel() * d.world_size
                skipped += result.skipped
                if log_now:
                    elapsed = time.perf_counter() - clock
                    update = global_norm(p.detach() - b for p, b in zip(model.parameters(), before))
                    accuracy = (result.logits.argmax(-1) == labels).float().mean().item()
                    fp16 = {"loss_scale": scaler.scale, "skipped_steps": skipped} if scaler else {}
                    log.write("train", step, epoch=step / steps_per_epoch, loss=result.loss,
                              accuracy=accuracy, lr=optimizer.param_groups[0]["lr"],
                              grad_norm=result.grad_norm, param_norm=parameter_norm(model),
                              update_norm=update, images_per_s=seen / elapsed, **fp16)
                    progress.update(step, loss=result.loss, acc=accuracy, img_s=round(seen / elapsed))
                    seen, clock = 0, time.perf_counter()
                if step % eval_every == 0 and step < total_steps:
                    run_eval()
                    clock = time.perf_counter()  # evaluation is not training throughput
                stop = cfg.train.stop_after_steps and step >= cfg.train.stop_after_steps
                if distributed.all_agree(bool(signals["stop"] or stop), d):
                    save()
                    progress.close()
                    return run_dir
                if step >= total_steps:
                    break
                if (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0) or \
                        step % steps_per_epoch == 0:
                    save()
    save()  # the final checkpoint, written once
    progress.close()
    final = run_eval()
    if d.is_main:
        finish(run_dir, model, final, step)
    return run_dir


# Keys that say how to run, not what to train: they may change when a run is resumed.
RUNTIME_KEYS = {"train.stop_after_steps", "train.progress", "train.device", "train.threads",
                "train.eval_batch_size", "data.data_dir", "data.num_workers"}


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, d: distributed.Dist) -> None:
    has_checkpoint = (run_dir / ckpt.CHECKPOINT).exists()  # every rank checks, then rank 0 writes
    if has_checkpoint and not resume:
        raise VitsamError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it "
                          f"or choose another --out")
    if resume and has_checkpoint:
        new, saved = flatten(cfg.to_dict()), flatten(config_lib.load(run_dir / "config.json").to_dict())
        changed = sorted(k for k in new if k not in RUNTIME_KEYS and new[k] != saved.get(k))
        if changed:
            raise VitsamError(f"cannot resume {str(run_dir)!r} with a different config (changed: "
                              f"{', '.join(changed)}); resume with the saved config.json")
    distributed.barrier(d)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.json")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def restore(run_dir: Path, model, optimizer, scheduler, scaler, device) -> int:
    state = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    state["rng"]["torch"] = state["rng"]["torch"].cpu()
    set_rng_state(state["rng"])
    return int(state["step"])


def finish(run_dir: Path, model: nn.Module, final: dict, step: int) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if '"kind": "train"' in line]
    rates = [r["images_per_s"] for r in records[1:]] or [r["images_per_s"] for r in records]
    summary = {"test_accuracy": final["accuracy"], "test_loss": final["loss"], "test_images": final["images"],
               "steps": step, "parameters": sum(p.numel() for p in model.parameters()),
               "train_images_per_s": float(sorted(rates)[len(rates) // 2]) if rates else math.nan}
    ckpt.atomic_write_json(summary, run_dir / "eval.json")
