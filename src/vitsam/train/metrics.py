"""What a run writes while it trains: metrics.jsonl and TensorBoard events (optional)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from vitsam.jsonfile import dumps


class MetricsLog:
    """Append-only strict JSON lines, one object per record; TensorBoard events too when
    tensorboard is installed. A context manager: the file and the event writer are
    flushed and closed on exit, also when training stops with an error.

    ``keep_until``: on resume, records written after the checkpoint's step are dropped
    (they will be written again), so a resumed run's log has no duplicates."""

    def __init__(self, run_dir: Path, enabled: bool = True, keep_until: int | None = None):
        self.enabled, self.run_dir = enabled, Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.keep_until = keep_until
        self.file = self.tb = None

    def __enter__(self) -> "MetricsLog":
        if not self.enabled:
            return self
        if self.keep_until is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.keep_until]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:  # the tensorboard extra is optional
            self.tb = None
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        self.file = self.tb = None

    def write(self, kind: str, step: int, **values) -> None:
        if self.file is None:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.file.write(dumps(record, indent=None) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def figure(self, tag: str, fig, step: int) -> None:
        """A matplotlib figure in the TensorBoard events (no-op without tensorboard)."""
        if self.tb is not None:
            self.tb.add_figure(tag, fig, step, close=False)


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


@torch.no_grad()
def global_norm(tensors) -> float:
    """L2 norm over a collection of tensors, accumulated in float32."""
    norms = [t.detach().float().norm() for t in tensors if t is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def parameter_norm(model: nn.Module) -> float:
    return global_norm(p for p in model.parameters())
