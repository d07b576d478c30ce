"""Progress of long work: training, evaluators, sweeps.

On a terminal: one self-overwriting line with the count, the rate and the estimated
time left. Elsewhere (CI logs, files, torchrun's merged output): a plain line at most
every ``every_s`` seconds (default: $VITSAM_PROGRESS_EVERY, else 10; 0 prints every
update) and at the end, so a long job is never silent and never floods a log. Under
torchrun only rank 0 reports.

    with Progress(total=95, label="corruptions", unit="sets") as bar:
        for ...:
            ...
            bar.advance()                     # or bar.update(done, loss=0.31)

``track(iterable, total, label)`` wraps a loop.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from vitsam.errors import VitsamError

T = TypeVar("T")
EVERY_ENV = "VITSAM_PROGRESS_EVERY"   # seconds between plain lines off a terminal
PLAIN_ENV = "VITSAM_PROGRESS_PLAIN"  # "1": plain lines even on a terminal (parallel workers share it)


def _seconds_from_environment(default: float = 10.0) -> float:
    text = os.environ.get(EVERY_ENV, "")
    try:
        return max(float(text), 0.0) if text else default
    except ValueError:
        raise VitsamError(f"{EVERY_ENV}={text!r}: expected a number of seconds, e.g. 10") from None


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int | None, label: str, unit: str = "it", enabled: bool = True,
                 every_s: float | None = None, stream: TextIO | None = None):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and os.environ.get("RANK", "0") == "0"
        self.tty = self.stream.isatty() and os.environ.get(PLAIN_ENV, "").lower() not in ("1", "true", "yes")
        self.every_s = _seconds_from_environment() if every_s is None else every_s
        self.done = 0
        self.fields: dict = {}
        self.start = self.last_print = time.perf_counter()

    def __enter__(self) -> "Progress":
        self.start = self.last_print = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1, **fields) -> None:
        self.update(self.done + n, **fields)

    def update(self, done: int, **fields) -> None:
        self.done, self.fields = done, fields or self.fields
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.total is not None and done >= self.total
        if self.tty or finished or now - self.last_print >= self.every_s:
            self._print(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.label}", count, f"{rate:.3g} {self.unit}/s" if rate < 1e4 else f"{rate:.0f} {self.unit}/s"]
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{_format_seconds((self.total - self.done) / rate)} left")
        else:
            parts.append(f"{_format_seconds(elapsed)} elapsed")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        return " | ".join(parts)

    def _print(self, now: float) -> None:
        text = self.line(now)
        self.stream.write(f"\r{text}\033[K" if self.tty else text + "\n")
        self.stream.flush()
        self.last_print = now

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
        elif self.done and (self.total is None or self.done < self.total):
            self._print(time.perf_counter())   # the final count, unless update() printed it
        self.stream.flush()
        self.enabled = False


def track(items: Iterable[T], total: int | None = None, label: str = "", unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with progress (total from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, label, unit, enabled) as bar:
        for item in items:
            yield item
            bar.advance()
