"""torch.distributed set-up from torchrun's environment; a no-op in a single process."""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from oasisvq.device import local_rank


def init_from_env(device: str) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL for
    CUDA (``device`` cuda or auto with a GPU), each process on GPU ``LOCAL_RANK``; else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        gpu = torch.device(device) if ":" in device else torch.device("cuda", local_rank())
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", device_id=gpu)
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t)
    return t
