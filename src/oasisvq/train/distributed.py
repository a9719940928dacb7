"""torch.distributed set-up from torchrun's environment; a no-op in a single process."""

from __future__ import annotations

import atexit
import functools
import os

import torch
import torch.distributed as dist


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


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t)
    return t


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:  # a bare "cuda": this process's GPU (LOCAL_RANK under torchrun)
            device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` option; ``auto`` is bf16 on CUDA with bf16 and on
    CPUs with native bf16 (AVX512-BF16/AMX), else off."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"amp={amp!r}: expected auto, bf16, fp16 or off")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of
    ``/proc/cpuinfo``, or of the ``cpuinfo`` text given). Elsewhere (AVX2-only CPUs, no
    ``/proc``) bf16 autocast is emulated and several times slower than fp32."""
    flags = set((_proc_cpuinfo() if cpuinfo is None else cpuinfo).split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _proc_cpuinfo() -> str:
    """``/proc/cpuinfo``, read once per process ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""
