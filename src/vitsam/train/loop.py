"""The training loop, readable top to bottom (nanoGPT style).

    config -> data -> model + objective -> optimizer (base or SAM family) -> steps -> run directory

Every regime (classification, adversarial, contrastive training) runs this one loop: an
objective (``vitsam.train.objectives``) turns a batch into a loss, and the optimizer
(SAM or not) calls the step's closure as often as it needs.

Exact resume: the loader's shuffle and augmentation depend only on (seed, epoch, step,
rank), the checkpoint holds weights, the objective's state, optimizer (incl. the base
optimizer's moments under SAM), scheduler, fp16 loss scale and every rank's RNG
(dropout / drop-path), so a run stopped at step s and resumed ends with the same weights
as one that never stopped.

Under torchrun every rank runs this loop on its shard of each batch (DDP; the SAM ascent
per rank unless ``sam.perturbation=global``) and draws its own dropout masks; evaluation
is sharded over the ranks; rank 0 alone logs and writes checkpoints, every rank resumes
from them, also when torchrun restarts failed workers.

A non-finite loss or gradient never reaches the weights on disk: the step is dropped
(before the update) and, with ``train.on_nonfinite=stop``, the run stops with an error
naming the step, leaving the last good checkpoint as it was.
"""
from __future__ import annotations

import math
import os
import signal
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from vitsam import config as config_lib
from vitsam.config import Config
from vitsam.data import Loader, seeded_generator
from vitsam.data.build import build_source, eval_loader
from vitsam.errors import VitsamError
from vitsam.evaluators.accuracy import evaluate, evaluate_splits
from vitsam.evaluators.protocol import TrainingEvals
from vitsam.models.compilation import compile_in_place
from vitsam.models.weights import save_weights
from vitsam.optim import build_optimizer, build_scheduler
from vitsam.train import checkpoint as ckpt
from vitsam.train import distributed
from vitsam.train.checkpoint import build_model, model_arguments
from vitsam.progress import Progress
from vitsam.train.metrics import MetricsLog, global_norm, parameter_norm
from vitsam.train.objectives import TrainingModule, build_objective
from vitsam.train.precision import AUTOCAST, loss_scaler
from vitsam.train.step import train_step
from vitsam.train.transfer import freeze_all_but_head, initialize_from

OBJECTIVE_STREAM, RANK_STREAM = 2, 3   # seeded_generator streams beside the loader's 0 (shuffle), 1 (crops)


def train(cfg: Config, out_dir: str | Path, resume: bool = False) -> Path:
    """Train ``cfg`` into run directory ``out_dir``; with ``resume``, continue from its checkpoint."""
    d = distributed.setup(cfg.train.device)
    try:
        return train_on(d, cfg, Path(out_dir), resume)
    finally:
        distributed.teardown(d)


def train_on(d: distributed.Dist, cfg: Config, run_dir: Path, resume: bool) -> Path:
    # ------------------------------------------------------------------ setup
    check_batch_size(cfg, d)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # torchrun restarts failed workers with the same arguments: continue, never start over.
    resume = resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    prepare_run_dir(run_dir, cfg, resume, d)

    train_source = build_source(cfg.data, "train")
    # in-memory sets are cropped on the training device; folder batches arrive pinned
    train_loader = Loader(train_source, cfg.train.batch_size // d.world_size, train=True,
                          img_size=cfg.data.img_size, seed=cfg.train.seed, crop_scale=tuple(cfg.data.crop_scale),
                          crop_ratio=tuple(cfg.data.crop_ratio), hflip=cfg.data.hflip, rank=d.rank,
                          world_size=d.world_size, num_workers=cfg.data.num_workers, device=d.device)
    eval_splits = ["test"] + (["val"] if cfg.data.val_fraction > 0 else [])
    eval_loaders = {split: eval_loader(cfg.data, split, cfg.train.eval_batch_size, rank=d.rank,
                                       world_size=d.world_size, device=d.device) for split in eval_splits}

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    args = model_arguments(cfg, train_source)
    model = build_model(args).to(d.device)
    restarting = resume and (run_dir / ckpt.CHECKPOINT).exists()
    if cfg.model.init_from and not restarting:  # transfer; a resumed run's checkpoint wins
        message = initialize_from(model, cfg.model.init_from)
        if d.is_main:
            print(f"[train] {message}", file=sys.stderr)
    if cfg.train.trainable == "head":
        freeze_all_but_head(model)  # a linear probe: before the objective and the optimizer see the model
    objective = build_objective(cfg, model).to(d.device)
    trainee = TrainingModule(model, objective)
    optimizer = build_optimizer(trainee, cfg.optim, cfg.sam)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, round(cfg.train.epochs * steps_per_epoch))
    objective.begin(total_steps)  # e.g. MoCo's momentum schedule spans the run
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = loss_scaler(cfg.train.precision)  # fp16 only
    # each rank its own dropout / drop-path masks: it trains on other images
    torch.manual_seed(seeded_generator(cfg.train.seed, RANK_STREAM, d.rank).initial_seed())
    step = restore(run_dir, trainee, optimizer, scheduler, scaler, d) if restarting else 0
    if cfg.train.compile:
        compile_in_place(trainee)  # state_dict keys unchanged; an uncompilable graph runs eagerly
    if d.is_main:
        ckpt.atomic_write_json(args, run_dir / "model.json")

    net = DistributedDataParallel(trainee, device_ids=[d.device] if d.device.type == "cuda" else None) \
        if d.enabled else trainee
    dtype = AUTOCAST[cfg.train.precision]
    step_options = dict(grad_clip=cfg.optim.grad_clip, autocast_dtype=dtype, scaler=scaler,
                        accumulation_steps=cfg.train.accumulation_steps)
    eval_every = max(1, round(cfg.train.eval_every_epochs * steps_per_epoch))
    checkpoint_every = cfg.train.checkpoint_every or steps_per_epoch
    health = Health(cfg, scaler is not None)
    scheduled = TrainingEvals(cfg, steps_per_epoch, d.device) if cfg.evals else None
    meter = Throughput()

    def save() -> None:
        state = {"model": model.state_dict(), "objective": objective.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": distributed.gather_objects(rng_state(), d), "step": step, "config": cfg.to_dict()}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if d.is_main:
            ckpt.save_checkpoint(state, run_dir / ckpt.CHECKPOINT)
        distributed.barrier(d)

    # ------------------------------------------------------------------ the loop
    net.train()
    with MetricsLog(run_dir, enabled=d.is_main, keep_until=step) as log, \
            Progress(total_steps, cfg.name or cfg.model.name, unit="steps",
                     enabled=cfg.train.progress and d.is_main) as progress, \
            stop_on_signals() as signals:
        clock = time.perf_counter()
        for epoch, index, (images, labels) in batches(train_loader, step, total_steps, d.device):
            generator = seeded_generator(cfg.train.seed, OBJECTIVE_STREAM, epoch, index, d.rank)
            batch = objective.prepare(model, (images, labels), generator)  # shared by both SAM passes
            log_now = (step + 1) % cfg.train.log_every == 0 or step + 1 == total_steps
            before = [p.detach().clone() for p in trainee.parameters()] if log_now else None
            result = train_step(net, optimizer, batch, **step_options)
            scheduler.step()  # a skipped step still counts: the lr follows the step
            step += 1
            meter.add(len(images) * d.world_size, time.perf_counter() - clock)
            health.check(result, step, d)
            if not result.skipped:
                objective.after_step(model)

            if log_now:
                values = dict(epoch=step / steps_per_epoch, loss=result.loss, lr=optimizer.param_groups[0]["lr"],
                              grad_norm=result.grad_norm, param_norm=parameter_norm(trainee),
                              update_norm=global_norm(p.detach() - b for p, b in zip(trainee.parameters(), before)),
                              images_per_s=meter.interval_rate(), skipped_steps=health.skipped)
                if result.logits is not None:
                    values["accuracy"] = (result.logits.argmax(-1) == labels).float().mean().item()
                if scaler is not None:
                    values["loss_scale"] = scaler.scale
                log.write("train", step, **values)
                progress.update(step, loss=result.loss, img_s=round(values["images_per_s"]))
            else:
                progress.update(step)
            if step % eval_every == 0 and step < total_steps:
                for split, loader in eval_loaders.items():
                    measured = evaluate(model, loader, d.device, dtype, d)
                    log.write("eval", step, epoch=step / steps_per_epoch, **{f"{split}_accuracy": measured.accuracy,
                                                                             f"{split}_loss": measured.loss})
            if scheduled is not None and d.is_main:
                scheduled.run(model, step, log)
            stop = bool(cfg.train.stop_after_steps and step >= cfg.train.stop_after_steps)
            if distributed.all_agree(signals["stop"] or stop, d):
                break
            if step % checkpoint_every == 0 and step < total_steps:
                save()
            clock = time.perf_counter()  # evaluation and checkpoints are not training throughput
        save()  # at the end, or where a stop was asked for
        if step == total_steps:
            finish(run_dir, cfg, model, eval_loaders, meter, step, step / steps_per_epoch, d, dtype, log)
    return run_dir


# --------------------------------------------------------------------------- pieces of the loop

def batches(loader: Loader, step: int, total_steps: int, device) -> Iterator[tuple[int, int, tuple]]:
    """(epoch, index in epoch, (images, labels) on ``device``) from global step ``step``
    to ``total_steps``, across epoch boundaries."""
    while step < total_steps:
        epoch, first = divmod(step, len(loader))
        for index, (images, labels) in enumerate(loader.iterate(epoch, first), first):
            yield epoch, index, (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            step += 1
            if step == total_steps:
                return


class Throughput:
    """Training images per second, timing only the steps (data loading included;
    evaluations and checkpoints not). The run's figure is the median over log intervals
    after the first (warm-up), i.e. at steady state, as the paper's Table 2 reports."""

    def __init__(self):
        self.images = self.seconds = 0.0
        self.rates: list[float] = []

    def add(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    def interval_rate(self) -> float:
        rate = self.images / self.seconds if self.seconds > 0 else math.nan
        self.rates.append(rate)
        self.images = self.seconds = 0.0
        return rate

    def steady_rate(self) -> float:
        rates = self.rates[1:] or self.rates
        return statistics.median(rates) if rates else math.nan


class Health:
    """Non-finite losses and gradients. A step whose gradient is not finite was already
    dropped before the update (``train_step`` reports it skipped); fp16 skips some while
    its loss scale settles. ``train.on_nonfinite=stop`` stops at the first non-finite
    step in fp32 / bf16; ``skip`` (and fp16) stop after ``max_skipped_steps`` in a row.
    Every rank decides alike (their flags are combined)."""

    def __init__(self, cfg: Config, loss_scaling: bool):
        self.policy = "skip" if loss_scaling else cfg.train.on_nonfinite
        self.limit = cfg.train.max_skipped_steps
        self.skipped = 0        # steps skipped so far
        self.in_a_row = 0

    def check(self, result, step: int, d: distributed.Dist) -> None:
        bad_loss = not math.isfinite(result.loss)
        if not distributed.all_agree(bad_loss or result.skipped, d):
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        what = f"the training loss ({result.loss})" if bad_loss else f"the gradient norm ({result.grad_norm})"
        advice = ("the last good checkpoint is unchanged; lower optim.lr, set optim.grad_clip, or use "
                  "train.on_nonfinite=skip to drop such steps")
        if self.policy == "stop":
            raise VitsamError(f"step {step}: {what} is not finite, so the run stops; {advice}")
        if self.in_a_row >= self.limit:
            raise VitsamError(f"step {step}: {self.in_a_row} steps in a row were skipped ({what} is not "
                              f"finite; train.max_skipped_steps={self.limit}); {advice}")


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
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_batch_size(cfg: Config, d: distributed.Dist) -> None:
    """Each rank takes batch_size / world_size images, in accumulation_steps micro-batches."""
    k = cfg.train.accumulation_steps
    if k < 1 or cfg.train.batch_size % (d.world_size * k):
        raise VitsamError(f"train.batch_size={cfg.train.batch_size} must be a multiple of the world size "
                          f"({d.world_size}) times train.accumulation_steps ({k}, at least 1)")


# --------------------------------------------------------------------------- run directory

# Keys that say how to run, not what to train: they may change when a run is resumed.
RUNTIME_KEYS = {"train.stop_after_steps", "train.progress", "train.device", "train.threads", "train.compile",
                "train.eval_batch_size", "data.data_dir", "data.num_workers", "evals"}


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, d: distributed.Dist) -> None:
    has_checkpoint = (run_dir / ckpt.CHECKPOINT).exists()  # every rank checks, then rank 0 writes
    if has_checkpoint and not resume:
        raise VitsamError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it "
                          f"or choose another --out")
    if resume and has_checkpoint:
        new, saved = flatten(cfg.to_dict()), flatten(config_lib.load(run_dir / "config.json").to_dict())
        changed = sorted(k for k in new if k.split(".")[0] not in RUNTIME_KEYS and k not in RUNTIME_KEYS
                         and new[k] != saved.get(k))
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


def restore(run_dir: Path, trainee: TrainingModule, optimizer, scheduler, scaler, d: distributed.Dist) -> int:
    state = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT, map_location=d.device)
    trainee.model.load_state_dict(state["model"])
    trainee.objective.load_state_dict(state.get("objective", {}))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(states) == d.world_size:  # the same world size: each rank continues its own stream
        set_rng_state(states[d.rank])
    return int(state["step"])


def finish(run_dir: Path, cfg: Config, model, eval_loaders: dict, meter: Throughput, step: int, epoch: float,
           d: distributed.Dist, dtype, log: MetricsLog) -> None:
    """The final evaluation of every split: eval.json (summary), predictions.npz (the
    per-image predictions, for paired comparisons between runs) and the metrics log."""
    accuracies, predictions = evaluate_splits(model, eval_loaders, d.device, dtype, d)
    log.write("eval", step, epoch=epoch, **{k: v for k, v in accuracies.items() if not k.endswith("_images")})
    summary = {**accuracies, "steps": step, "parameters": sum(p.numel() for p in model.parameters()),
               "train_images_per_s": meter.steady_rate(),
               "train_images_per_s_per_device": meter.steady_rate() / d.world_size,
               "batch_size": cfg.train.batch_size, "precision": cfg.train.precision,
               "devices": d.world_size, "device_type": d.device.type}
    if d.is_main:
        ckpt.write_evaluation(run_dir, summary, predictions)
        save_weights(model, run_dir / ckpt.WEIGHTS)  # the final weights alone, no pickle
