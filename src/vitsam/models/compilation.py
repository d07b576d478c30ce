"""``torch.compile`` for training, with a clean fallback to eager execution.

Measured (benchmarks/bench_throughput.py --compile, 2-core CPU, batch 128, 5 rounds):
compiled steps of the demo's tiny models take 1/1.03 (vit_tiny), 1/1.02 (mixer_tiny) and
1/1.15 (resnet_tiny) of the eager CPU time, after 17-38 s of compiling with a warm
compiler cache and 2-3 minutes with a cold one: off by default (``train.compile``). For
ViT-B/16 and ResNet-50 on a GPU, benchmarks/gpu_suite.sh measures it.
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
