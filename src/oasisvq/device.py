"""Which device and precision to compute on: the CPU or a GPU, fp32 or bf16."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

from oasisvq.errors import ConfigError


def local_rank() -> int:
    """This process's GPU index on its node under torchrun (``LOCAL_RANK``), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
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
        raise ConfigError(f"--amp {amp}: expected auto, bf16, fp16 or off")
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


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run the block with at most ``n`` torch threads on the CPU (nothing changes on a
    GPU). Many tiny steps (a KV-cached prior drawing a few grids cell by cell) run
    faster on one thread: with two, every small matmul waits for the other thread, and
    for its core when something else runs beside (measured: 12x slower on a loaded
    2-core machine)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
