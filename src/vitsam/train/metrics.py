"""What a run writes while it trains: metrics.jsonl, TensorBoard events (optional), a progress line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn


class MetricsLog:
    """Append-only JSON lines, one object per record; TensorBoard too when installed."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # the tensorboard extra is optional
                self.tb = None

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records written after the checkpoint (they will be written again)."""
        if not (self.enabled and self.path.exists()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


class Progress:
    """One self-overwriting line on a terminal, a plain line every `every` updates otherwise."""

    def __init__(self, total: int, label: str, enabled: bool = True, every: int = 50):
        self.total, self.label, self.enabled, self.every = total, label, enabled, every
        self.tty = sys.stderr.isatty()

    def update(self, step: int, **fields) -> None:
        if not self.enabled or not (self.tty or step % self.every == 0 or step == self.total):
            return
        width = 24
        done = int(width * step / max(self.total, 1))
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        line = f"{self.label} [{'#' * done}{'.' * (width - done)}] {step}/{self.total} {text}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
