"""What every benchmark records beside its numbers: the machine and the command, and the
one way results are written."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from oasisvq.device import cpu_has_native_bf16


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        # the vector ISA torch dispatches to (e.g. AVX2, AVX512) and whether the CPU has
        # native bf16 (AVX512-BF16/AMX): without it bf16 autocast is emulated and slow
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def cpu_label(m: dict) -> str:
    """``AMD EPYC (AVX2)`` / ``AMD EPYC (AVX512, native bf16)``; the bare CPU name for
    results recorded before the capability was."""
    if "cpu_capability" not in m:
        return m["cpu"]
    bf16 = ", native bf16" if m.get("cpu_native_bf16") else ""
    return f"{m['cpu']} ({m['cpu_capability']}{bf16})"


def command_line() -> str:
    """How this benchmark was started: ``python -m benchmarks.NAME ARGS``."""
    module = getattr(sys.modules["__main__"].__spec__, "name", None)
    start = ["python", "-m", module] if module else ["python", sys.argv[0]]
    return shlex.join([*start, *sys.argv[1:]])


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def json_default(o: object) -> object:
    """What ``json.dumps`` cannot write by itself: numpy scalars and sets (else the text)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def save_result(
    result: dict, out: str | Path, plot: Callable[[dict, Path], None] | None = None
) -> None:
    """Write a benchmark's JSON result to ``out`` and, with ``plot``, its figure beside it
    (``.png``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=json_default))
    if plot is not None:
        plot(result, out.with_suffix(".png"))
