"""torchrun / DistributedDataParallel plumbing: no home-made launcher.

``torchrun --nproc_per_node=N -m vitsam train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything runs as a single process of world size 1. Multi-node runs use
torchrun's usual flags (``--nnodes``, ``--rdzv-endpoint``); ``--max-restarts`` restarts
failed workers, and the training loop then resumes from the run's latest checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vitsam.errors import VitsamError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup created the process group, so teardown destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VitsamError(f"train.device={name!r} but no CUDA device is available; valid choices here: auto, cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise VitsamError(f"train.device={name!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def setup(device_name: str = "auto") -> Dist:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on GPUs), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device, owns_group)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_agree(flag: bool, d: Dist) -> bool:
    """True on every rank iff `flag` is true on some rank (e.g. 'a stop was requested')."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_rank(flag: torch.Tensor) -> bool:
    """True on every rank iff the 0-d tensor ``flag`` (on the backend's device) is true on
    some rank of the current process group; the flag itself outside one."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
