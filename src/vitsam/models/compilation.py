"""``torch.compile`` for training, with a clean fallback to eager execution.

Measured (benchmarks/bench_throughput.py --compile, 2-core CPU, batch 128): compiling the
tiny demo models' training module saves about 10% of a step's CPU time but costs minutes
of compilation per model, so it is off by default (``train.compile``); on a GPU, for
ViT-B/16 or ResNet-50, compilation is worth its minute (benchmarks/gpu_suite.sh).
"""
from __future__ import annotations

import torch
import torch._dynamo
from torch import nn


def compile_in_place(module: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile ``module``'s forward in place (``nn.Module.compile``: its ``state_dict`` keys
    stay as they are, so checkpoints move between compiled and eager runs).

    Compilation happens at the first call (forward and, at the first backward, the
    backward graph). A graph that dynamo or the backend cannot compile (no C++ compiler,
    an unsupported operation) runs eagerly instead of stopping the run; torch logs why.
    """
    torch._dynamo.config.suppress_errors = True  # read when a frame compiles, not here: process-wide
    module.compile(backend=backend, mode=mode)
    return module
