"""The one protocol for everything that measures a model, and its runner.

An evaluator is a named entry in ``EVALUATORS``: a dataclass of options (configured
once, from defaults, the command line or ``config.evals``), a function
``run(model, data, options) -> Result`` and the report section its results feed.
Geometry analyzers (``vitsam.evaluators.geometry``), robustness evaluators
(``vitsam.evaluators.robustness``) and clean accuracy (``vitsam.evaluators.accuracy``)
all register here, so ``vitsam evaluate / analyze / robust``, the training loop's
``evals`` cadence, the demo and ``vitsam report`` run them the same way.

``evaluate_run`` caches every result in the run directory under a key of what it
depends on: the weights' content hash, the evaluator's name and every option, and the
run's data settings. A result is reused only when all of them match, and the runner
says so; a run trained further (new weights) is measured again. Files:

    RUN/results/<name>/<key>.json     metrics + name, options, weights hash, step, seconds
    RUN/results/<name>/<key>.npz      per-image arrays (e.g. correctness), when any
    RUN/results/<name>/<key>/*.png    figures
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from vitsam.config import Config
from vitsam.errors import VitsamError, unknown_choice
from vitsam.jsonfile import dumps, write_json

Batch = tuple[torch.Tensor, torch.Tensor]
RESULTS = "results"


@dataclass
class Result:
    metrics: dict                                      # JSON-serializable
    figures: dict = field(default_factory=dict)        # name -> matplotlib Figure
    arrays: dict = field(default_factory=dict)         # name -> numpy array (per-image data)


@dataclass(frozen=True)
class Evaluator:
    name: str
    options: type                                      # a dataclass: the options and their defaults
    run: Callable[[nn.Module, "RunData", Any], Result]
    section: str                                       # the report section its results feed
    summary: Callable[[dict], str] | None = None       # one line for the terminal
    doc: str = ""
    environment: Callable[[Any], dict] | None = None  # what else the result depends on (part of its key)


EVALUATORS: dict[str, Evaluator] = {}


def register(name: str, options: type, section: str, summary: Callable[[dict], str] | None = None,
             environment: Callable[[Any], dict] | None = None):
    """Decorator on ``run(model, data, options) -> Result``; ``environment(options)`` names
    what else than the options its result depends on (e.g. which frost images exist)."""
    def wrap(run):
        doc = (run.__doc__ or options.__doc__ or "").strip().splitlines()
        EVALUATORS[name] = Evaluator(name, options, run, section, summary, doc[0] if doc else "", environment)
        return run
    return wrap


def evaluators() -> dict[str, Evaluator]:
    """Every registered evaluator (the package ``vitsam.evaluators`` imports the modules
    that register them)."""
    return EVALUATORS


def evaluator(name: str) -> Evaluator:
    if name not in evaluators():
        raise unknown_choice("evaluator", name, sorted(EVALUATORS))
    return EVALUATORS[name]


def names_in(section: str) -> list[str]:
    return [name for name, entry in evaluators().items() if entry.section == section]


# --------------------------------------------------------------------------- options

def configure(name: str, overrides: dict | None = None):
    """The options of evaluator ``name`` with ``overrides`` (strings from the command line
    or values from a config) checked and converted to the fields' types."""
    cls = evaluator(name).options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise unknown_choice(f"option of evaluator {name!r}", key, fields)
        kwargs[key] = _convert(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def _convert(value, hint, where: str):
    """Command-line strings and JSON values to the option's type: tuples from "a,b,c"
    (fractions like 1/255 allowed), booleans from true/false, Literals checked."""
    origin = typing.get_origin(hint) or hint
    try:
        if origin is typing.Literal:
            if value not in typing.get_args(hint):
                raise unknown_choice(where, value, typing.get_args(hint))
            return value
        if origin is tuple:
            if isinstance(value, str):
                value = [_scalar(v.strip()) for v in value.split(",") if v.strip()]
            return tuple(value)
        if origin is bool and isinstance(value, str):
            return {"true": True, "1": True, "false": False, "0": False}[value.lower()]
        if origin in (int, float) and isinstance(value, str):
            return origin(_scalar(value))
        return origin(value)
    except (ValueError, TypeError, KeyError, ZeroDivisionError):
        raise VitsamError(f"option {where}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None


def _scalar(text: str):
    """'0.5', '4/255', 'true', 'gaussian_noise' -> a number, a fraction, a bool or the word."""
    num, slash, den = text.partition("/")
    if slash:
        return float(num) / float(den)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def options_json(options) -> dict:
    return json.loads(dumps(dataclasses.asdict(options), indent=None))


# --------------------------------------------------------------------------- the data of a run

class RunData:
    """What an evaluator may ask of a run, built lazily and shared by the evaluators of
    one invocation: stratified un-augmented batches of a split (the first n of a seeded
    class-stratified order, so 256 images are a prefix of 1024), the run's own training
    loss, its class names, its config."""

    def __init__(self, cfg: Config, device: torch.device, batch_size: int = 128, seed: int = 0):
        self.cfg, self.device, self.batch_size, self.seed = cfg, device, batch_size, seed
        self._batches: dict[tuple, list[Batch]] = {}

    def loader(self, split: str, examples: int | None = None, batch_size: int | None = None):
        from vitsam.data.build import eval_loader

        return eval_loader(self.cfg.data, split, batch_size or self.batch_size, examples, seed=self.seed)

    def batches(self, split: str, examples: int | None) -> list[Batch]:
        """Up to ``examples`` images of ``split`` on the device, as a list of batches."""
        key = (split, examples)
        if key not in self._batches:
            self._batches[key] = [(x.to(self.device), y.to(self.device))
                                  for x, y in self.loader(split, examples).iterate(0)]
        return self._batches[key]

    @property
    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The run's training loss on (logits, labels): cross-entropy with the run's label
        smoothing (analyses measure the loss the run trained on)."""
        smoothing = self.cfg.train.label_smoothing
        return lambda logits, labels: torch.nn.functional.cross_entropy(logits.float(), labels,
                                                                        label_smoothing=smoothing)

    @property
    def loss_name(self) -> str:
        smoothing = self.cfg.train.label_smoothing
        return f"cross-entropy (label smoothing {smoothing})" if smoothing else "cross-entropy"

    def classes(self) -> list[str]:
        from vitsam.data.build import build_source

        return list(build_source(self.cfg.data, "test").classes)


# --------------------------------------------------------------------------- the runner

def weights_hash(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return digest.hexdigest()[:16]


def result_key(name: str, options, data: RunData) -> str:
    """The file key: a hash of the evaluator, every option and the data settings. The
    weights hash is kept inside the file: newer weights replace the result."""
    data_settings = {k: v for k, v in dataclasses.asdict(data.cfg.data).items() if k not in ("data_dir", "num_workers")}
    environment = evaluator(name).environment
    ident = dumps({"name": name, "options": options_json(options), "data": data_settings,
                   "batch_size": data.batch_size, "seed": data.seed, "loss": data.loss_name,
                   **({"environment": environment(options)} if environment else {})}, indent=None)
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def result_path(run_dir: str | Path, name: str, key: str) -> Path:
    return Path(run_dir) / RESULTS / name / f"{key}.json"


def run_one(name: str, options, model: nn.Module, data: RunData) -> tuple[Result, float]:
    """Run one evaluator in measurement conditions; returns (result, seconds)."""
    start = time.perf_counter()
    result = evaluator(name).run(model, data, options)
    return result, time.perf_counter() - start


def save(result: Result, path: Path, record: dict) -> dict:
    """Figures as PNGs, arrays as .npz, metrics (with ``record``) as strict JSON."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if result.figures:
        path.with_suffix("").mkdir(parents=True, exist_ok=True)
    for figure_name, fig in result.figures.items():
        fig.savefig(path.with_suffix("") / f"{figure_name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    if result.arrays:
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **result.arrays)
        tmp.replace(path.with_suffix(".npz"))
    full = {**record, **result.metrics}
    write_json(full, path)
    return full


def evaluate_run(run_dir: str | Path, names: Sequence[str], options: dict[str, dict] | None = None,
                 force: bool = False, device: str = "auto", batch_size: int = 128, data_dir: str | None = None,
                 log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run evaluators ``names`` on a run's latest weights, reusing cached results; returns
    name -> result record (metrics + name, options, key, weights, step, seconds)."""
    options = options or {}
    for name in options:
        evaluator(name)  # an option for an unknown evaluator fails before anything runs
    records = measure(run_dir, [(name, options.get(name)) for name in names], force, device, batch_size,
                      data_dir, log)
    return dict(zip(names, records))


def measure(run_dir: str | Path, requests: Sequence[tuple[str, dict | None]], force: bool = False,
            device: str = "auto", batch_size: int = 128, data_dir: str | None = None,
            log: Callable[[str], None] = print, any_options: bool = False) -> list[dict]:
    """Run each (evaluator name, option overrides) of ``requests`` on a run's latest
    weights, reusing cached results (one evaluator may appear with several options, e.g.
    on training and on held-out images); returns the records in request order.
    ``any_options``: a saved result for these weights (on the same split) answers the
    request whatever its other options (a report over runs measured before, e.g. by the
    demo, shows their results instead of measuring again with the defaults)."""
    from vitsam.train.checkpoint import load_run
    from vitsam.train.distributed import pick_device

    configured = [(name, configure(name, overrides)) for name, overrides in requests]  # fail early
    run = load_run(run_dir)
    if data_dir:
        run.config.data.data_dir = data_dir
    device = pick_device(device)
    model = run.model.to(device)
    data = RunData(run.config, device, batch_size)
    weights = weights_hash(model)
    records = []
    for name, opts in configured:
        key = result_key(name, opts, data)
        path = result_path(run_dir, name, key)
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached and cached.get("weights") == weights and not force:
            log(f"[evaluate] {run_dir}: {name}: reusing the result of {cached.get('finished', 'earlier')} "
                f"(same weights, step {cached.get('step')}, same options)")
            records.append(cached)
            continue
        if any_options and not force and (saved := saved_for(run_dir, name, opts, weights)):
            log(f"[evaluate] {run_dir}: {name}: reusing the result of {saved.get('finished', 'earlier')} "
                f"(same weights, step {saved.get('step')}, its own options)")
            records.append(saved)
            continue
        log(f"[evaluate] {run_dir}: {name} ...")
        result, seconds = run_one(name, opts, model, data)
        to_tensorboard(run_dir, name, result, run.step)
        record = {"evaluator": name, "options": options_json(opts), "key": key, "weights": weights,
                  "step": run.step, "seconds": round(seconds, 2), "loss": data.loss_name,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        records.append(save(result, path, record))
        log(f"[evaluate] {run_dir}: {name} in {seconds:.1f}s: {summary_line(name, records[-1])}")
    return records


def to_tensorboard(run_dir: str | Path, name: str, result: Result, step: int) -> None:
    """The result's numbers and figures in the run's TensorBoard events (when installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(Path(run_dir) / "tensorboard")) as writer:
        for key, value in result.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                writer.add_scalar(f"{name}/{key}", value, step)
        for figure_name, fig in result.figures.items():
            writer.add_figure(f"{name}/{figure_name}", fig, step, close=False)


def find_results(run_dir: str | Path, name: str, current_only: bool = True, **where) -> list[dict]:
    """Saved results of evaluator ``name`` for a run, newest first; ``where`` filters on
    options (``find_results(run, "attack", norm="linf")``). ``current_only``: only those
    of the newest weights among the saved results (``evaluate_run`` compares with the
    run's actual weights; this reader does not load them)."""
    folder = Path(run_dir) / RESULTS / name
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    records = [r for r in records if all(r.get("options", {}).get(k) == v for k, v in where.items())]
    records.sort(key=lambda r: (r.get("step", 0), r.get("finished", "")), reverse=True)
    if current_only and records:
        newest = (records[0].get("step"), records[0].get("weights"))
        records = [r for r in records if (r.get("step"), r.get("weights")) == newest]
    return records


def saved_for(run_dir: str | Path, name: str, options, weights: str) -> dict | None:
    """The newest saved result of ``name`` for these weights, on the same split when the
    evaluator has one, whatever its other options."""
    where = {"split": options.split} if hasattr(options, "split") else {}
    return next((r for r in find_results(run_dir, name, current_only=False, **where) if r.get("weights") == weights),
                None)


def find_result(run_dir: str | Path, name: str, **where) -> dict | None:
    found = find_results(run_dir, name, **where)
    return found[0] if found else None


def result_arrays(run_dir: str | Path, record: dict) -> dict[str, np.ndarray]:
    """The per-image arrays saved beside a result record (empty when none)."""
    path = result_path(run_dir, record["evaluator"], record["key"]).with_suffix(".npz")
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as arrays:
        return dict(arrays)


def summary_line(name: str, record: dict) -> str:
    if "skipped" in record:
        return f"skipped ({record['skipped']})"
    entry = evaluator(name)
    return entry.summary(record) if entry.summary else f"written to {RESULTS}/{name}/"


# --------------------------------------------------------------------------- during training

class TrainingEvals:
    """``config.evals`` (big_vision's ``evals``): evaluators run during training every
    ``every_epochs`` epochs (default 1), e.g. ``evals = {"hessian": {"every_epochs": 5,
    "top_k": 1}}``; their numbers go to the metrics log (kind ``eval/<name>``) and their
    figures to TensorBoard."""

    def __init__(self, cfg: Config, steps_per_epoch: int, device: torch.device, batch_size: int = 128):
        self.data = RunData(cfg, device, batch_size)
        self.schedule = []
        for name, table in cfg.evals.items():
            table = dict(table)
            every = float(table.pop("every_epochs", 1.0))
            if every <= 0:
                raise VitsamError(f"evals.{name}.every_epochs must be > 0, got {every}")
            self.schedule.append((name, max(1, round(every * steps_per_epoch)), configure(name, table)))

    def due(self, step: int) -> list[tuple[str, Any]]:
        return [(name, options) for name, every, options in self.schedule if step % every == 0]

    def run(self, model: nn.Module, step: int, log) -> None:
        for name, options in self.due(step):
            was_training = model.training
            result, seconds = run_one(name, options, model, self.data)
            model.train(was_training)
            numbers = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            log.write(f"eval/{name}", step, seconds=round(seconds, 2), **numbers)
            for figure_name, fig in result.figures.items():
                log.figure(f"{name}/{figure_name}", fig, step)
            import matplotlib.pyplot as plt
            plt.close("all")
