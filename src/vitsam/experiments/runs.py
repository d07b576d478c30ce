"""The runs of a paper table: planned as configs, trained in order (a run that another
starts from comes first), finished runs reused, interrupted ones resumed.

A run is finished when its ``eval.json`` exists; it is reused only if its saved config
is the planned one (up to runtime keys such as the device), so changing a table's recipe
never silently reports old runs. An interrupted run (a checkpoint, no eval.json)
continues from its checkpoint, which the training loop keeps exact.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vitsam import config as config_lib
from vitsam.config import Config
from vitsam.errors import VitsamError
from vitsam.stats import Estimate, paired_difference
from vitsam.train.checkpoint import CHECKPOINT, load_predictions


@dataclass
class Run:
    key: str                      # its place under the table's directory, e.g. "vit_tiny/1-10/sam_aug"
    label: str                    # how a report names it
    config: Config
    run_dir: Path
    tags: dict = field(default_factory=dict)     # what the report groups by (model, fraction, variant, ...)
    evaluate: Callable[["Run"], None] | None = None   # after training (e.g. robustness), resumable itself

    @property
    def finished(self) -> bool:
        return (self.run_dir / "eval.json").is_file()

    def summary(self) -> dict | None:
        path = self.run_dir / "eval.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def accuracy(self) -> float | None:
        summary = self.summary()
        return None if summary is None else summary.get("test_accuracy")

    def correct(self) -> np.ndarray | None:
        """Per-test-image correctness (bool, in test-set order), or None before the run ends."""
        if not self.finished:
            return None
        predictions = load_predictions(self.run_dir)
        return predictions["test_predicted"] == predictions["test_labels"]


def check_same_recipe(run: Run) -> None:
    """A finished or interrupted run directory must hold the planned config."""
    from vitsam.train.loop import RUNTIME_KEYS, flatten

    path = run.run_dir / "config.json"
    if not path.is_file():
        return
    saved = flatten(config_lib.load(path).to_dict())
    planned = flatten(run.config.to_dict())
    changed = sorted(k for k in planned if k not in RUNTIME_KEYS and k.split(".")[0] not in RUNTIME_KEYS
                     and planned[k] != saved.get(k))
    if changed:
        raise VitsamError(f"{str(run.run_dir)!r} holds a run of another recipe (changed: {', '.join(changed[:6])}); "
                          f"remove it or choose another --out")


def execute(runs: list[Run], log: Callable[[str], None] = print,
            on_finished: Callable[[Run], None] | None = None) -> None:
    """Train every run that has not finished (in order), then its evaluation."""
    from vitsam.train.loop import train

    for i, run in enumerate(runs, 1):
        check_same_recipe(run)
        where = f"[{i}/{len(runs)}] {run.key}"
        if run.finished:
            log(f"{where}: finished earlier, reusing {run.run_dir}")
        else:
            resume = (run.run_dir / CHECKPOINT).is_file()
            log(f"{where}: {'resuming' if resume else 'training'} {run.label}")
            start = time.perf_counter()
            train(run.config, run.run_dir, resume=resume)
            if not run.finished:   # stopped early (a signal, train.stop_after_steps): not finished
                raise VitsamError(f"{run.key} stopped before its last step; run the same command again to resume")
            log(f"{where}: test accuracy {100 * run.accuracy():.2f}% in {time.perf_counter() - start:.0f}s")
        if run.evaluate is not None:
            run.evaluate(run)
        if on_finished is not None:
            on_finished(run)


# --------------------------------------------------------------------------- numbers for reports

def percent(run: Run | None) -> str:
    accuracy = None if run is None else run.accuracy()
    return "—" if accuracy is None else f"{100 * accuracy:.1f}"


def gain(base: Run | None, other: Run | None) -> Estimate | None:
    """other - base accuracy in points, with a 95% paired bootstrap interval over the test images."""
    if base is None or other is None:
        return None
    a, b = base.correct(), other.correct()
    if a is None or b is None:
        return None
    return paired_difference(a, b).scaled(100)


def signed(estimate: Estimate | None) -> str:
    """'+1.2 [+0.4, +2.0]' or '—'."""
    if estimate is None:
        return "—"
    if estimate.low is None:
        return f"{estimate.value:+.1f}"
    return f"{estimate.value:+.1f} [{estimate.low:+.1f}, {estimate.high:+.1f}]"


def marked(text: str, estimate: Estimate | None) -> str | tuple[str, str]:
    """A report cell: ``text`` coloured 'good' / 'bad' when the interval of ``estimate``
    excludes zero (``vitsam.report.html.table``'s (text, css class) cells), else plain."""
    if estimate is None or not estimate.excludes_zero():
        return text
    return text, "good" if estimate.value > 0 else "bad"
