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
        init_process_group("nccl" if device.type == "cuda" else "gloo", rank, world_size)
    return Dist(rank, world_size, local_rank, device, owns_group)


def init_process_group(backend: str, rank: int, world_size: int) -> None:
    """``init_process_group`` from torchrun's environment, each restart in its own namespace.

    torchrun's agent keeps one TCPStore across ``--max-restarts`` restarts and the process
    group's keys carry no attempt number, so restarted workers would read the dead
    workers' addresses and fail to connect (pytorch/pytorch#135712). The restart count
    scopes them; it is the same on every worker of a single-node run. (Multi-node, torch
    counts restarts per node: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun, which
    gives each attempt a store of its own; no prefix is needed then.)
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not (restart and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"):
        dist.init_process_group(backend=backend)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"vitsam/restart{restart}", store),
                            rank=rank, world_size=world_size)


def barrier(d: Dist) -> None:
    if d.enabled:  # NCCL wants the rank's GPU named, or it guesses
        dist.barrier(device_ids=[d.device.index] if d.device.type == "cuda" else None)


def all_agree(flag: bool, d: Dist) -> bool:
    """True on every rank iff `flag` is true on some rank (e.g. 'a stop was requested')."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj`` (picklable, e.g. its RNG state), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sums over ranks (float64), e.g. correct counts of sharded evaluation."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


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
