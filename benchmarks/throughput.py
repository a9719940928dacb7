"""Training and inference throughput of the VQ-VAE presets; one JSON result.

    python -m benchmarks.throughput --presets seed compact hifi --out benchmarks/results/throughput.json
    python -m benchmarks.throughput --presets seed --steps 2 --warmup 1 --out /tmp/throughput.json  # quick

For every preset, device and variant it reports

* **training** images per second: full optimiser steps of this project's ``Engine``
  (``VQVAETask`` loss, AdamW, gradient clipping, LR schedule, autocast) at the preset's
  batch size, timed over ``--steps`` steps after ``--warmup`` untimed ones (the first
  holds k-means initialisation and, with ``compile``, compilation: its time is recorded
  as ``first_step_seconds``);
* **inference** images per second: ``decode(encode(x))`` (encoder, nearest code,
  decoder) under ``torch.no_grad`` at ``--infer-batch``;
* the peak resident memory of the process (``ru_maxrss``; each measurement runs in its
  own process) after training and at the end, and on CUDA the peak allocated memory;
* the CPU time used, so that ``images_per_cpu_second * threads`` estimates the rate on
  idle cores when the machine is shared (wall-clock rates measure the other jobs too).

Variants combine ``amp`` (autocast: bf16 on CPU, bf16 or fp16 on CUDA as the engine
picks), ``channels_last`` (model weights and inputs) and ``compile`` (``torch.compile``
of the training model, of the inference function); a failing compile is recorded with
its error, not raised. ``fp32`` is the plain baseline.

The input is synthetic: uniform random uint8 images of the preset's size. Convolution
costs do not depend on pixel values, so the rates hold for real slices too (the
quantizer's dead-code restarts may fire on other steps, a negligible cost).
Every figure carries the name of the device that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import command_line, machine_info, peak_rss_mib, save_result
from benchmarks.plots import bar_panels
from oasisvq.data.slices import SliceSet
from oasisvq.data.torch_dataset import to_unit
from oasisvq.device import amp_dtype
from oasisvq.model.presets import get_preset
from oasisvq.model.vqvae import VQVAE, count_params
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import Engine
from oasisvq.train.vqvae_task import VQVAETask

VARIANTS = (
    "fp32",
    "channels_last",
    "amp",
    "amp+channels_last",
    "compile",
    "compile+amp+channels_last",
)
FLAGS = ("amp", "channels_last", "compile")


def parse_variant(name: str) -> dict[str, bool]:
    """``"compile+amp"`` -> ``{"amp": True, "channels_last": False, "compile": True}``."""
    parts = set() if name == "fp32" else set(name.split("+"))
    unknown = parts - set(FLAGS)
    if unknown:
        raise ValueError(
            f"variant {name!r}: unknown flag(s) {sorted(unknown)}; use fp32 or {'+'.join(FLAGS)}"
        )
    return {f: f in parts for f in FLAGS}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return machine_info()["cpu"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(err: BaseException) -> str:
    lines = traceback.format_exception_only(type(err), err)
    return "".join(lines).strip()[-600:]


def measure(preset: str, variant: str, device_str: str, args: argparse.Namespace) -> dict:
    """One (preset, variant, device) measurement in this process."""
    torch.set_num_threads(args.threads)
    flags = parse_variant(variant)
    cfg = get_preset(preset)
    device = torch.device(device_str)
    batch = args.batch_size or cfg.batch_size
    size = cfg.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size), dtype=np.uint8)
    train_set = SliceSet(images=images, subjects=[""] * batch, sources=[""] * batch)
    torch.manual_seed(0)
    model = VQVAE(cfg)
    amp = ("auto" if device.type == "cuda" else "bf16") if flags["amp"] else "off"
    tcfg = TrainConfig(
        epochs=1,
        batch_size=batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        device=device_str,
        amp=amp,
        channels_last=flags["channels_last"],
        compile=flags["compile"],
    )
    row: dict = {
        "preset": preset,
        "variant": variant,
        **flags,
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "image_size": size,
        "grid": cfg.grid,
        "codebook_size": cfg.quantizer.codebook_size,
        "params": count_params(model),
        "input": "synthetic uniform random uint8",
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(1)

    def make_batch(n: int) -> torch.Tensor:
        x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)
        return to_unit(x, device, channels_last=flags["channels_last"])

    # ---- training
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        try:
            task = VQVAETask(model, train_set, None, batch)
            engine = Engine(task, tcfg, Path(tmp), {"kind": "benchmark"})
            row["amp_dtype"] = None if engine.amp is None else str(engine.amp).replace("torch.", "")
            engine.model.train()
            t = time.perf_counter()
            engine.train_step(make_batch(batch))
            _sync(device)
            row["first_step_seconds"] = time.perf_counter() - t
            for _ in range(max(0, args.warmup - 1)):
                engine.train_step(make_batch(batch))
            xs = [make_batch(batch) for _ in range(args.steps)]
            _sync(device)
            cpu, t = time.process_time(), time.perf_counter()
            for x in xs:
                engine.train_step(x)
            _sync(device)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            row["train"] = {
                "ok": True,
                "steps": args.steps,
                "seconds": wall,
                "images_per_second": batch * args.steps / wall,
                "images_per_cpu_second": batch * args.steps / cpu if cpu > 0 else None,
                "peak_rss_mib": peak_rss_mib(),
            }
            if device.type == "cuda":
                row["train"]["cuda_peak_allocated_mib"] = (
                    torch.cuda.max_memory_allocated(device) / 2**20
                )
            del engine, task, xs
        except Exception as err:  # noqa: BLE001 - e.g. torch.compile failing: record it
            row["train"] = {"ok": False, "error": _error(err), "peak_rss_mib": peak_rss_mib()}

    # ---- inference: encoder, nearest code, decoder
    try:
        model = model.to(device).eval()
        if flags["channels_last"]:
            model = model.to(memory_format=torch.channels_last)

        def roundtrip(x: torch.Tensor) -> torch.Tensor:
            return model.decode(model.encode(x))

        fn = torch.compile(roundtrip) if flags["compile"] else roundtrip
        dtype = amp_dtype(amp, device)  # the training's autocast dtype (None: off)
        ctx = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        )
        nb = args.infer_batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            t = time.perf_counter()
            with ctx():
                fn(make_batch(nb))
            _sync(device)
            first = time.perf_counter() - t
            with ctx():
                for _ in range(max(0, args.warmup - 1)):
                    fn(make_batch(nb))
            xs = [make_batch(nb) for _ in range(args.steps)]
            _sync(device)
            cpu, t = time.process_time(), time.perf_counter()
            with ctx():
                for x in xs:
                    fn(x)
            _sync(device)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        row["inference"] = {
            "ok": True,
            "batch_size": nb,
            "steps": args.steps,
            "first_call_seconds": first,
            "seconds": wall,
            "images_per_second": nb * args.steps / wall,
            "images_per_cpu_second": nb * args.steps / cpu if cpu > 0 else None,
        }
        if device.type == "cuda":
            row["inference"]["cuda_peak_allocated_mib"] = (
                torch.cuda.max_memory_allocated(device) / 2**20
            )
    except Exception as err:  # noqa: BLE001
        row["inference"] = {"ok": False, "error": _error(err)}
    row["peak_rss_mib"] = peak_rss_mib()
    return row


def _run_one(preset: str, variant: str, device: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh interpreter, so that its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            "-m",
            __spec__.name,
            "--presets",
            preset,
            "--variants",
            variant,
            "--devices",
            device,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--infer-batch",
            str(args.infer_batch),
            "--out",
            str(out),
            "--worker",
        ]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        failed = {"preset": preset, "variant": variant, "device_type": device}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:  # e.g. a slow compilation: recorded, not raised
            return {**failed, "error": f"no result within --timeout {args.timeout:g} s"}
        if proc.returncode != 0 or not out.exists():
            return {
                **failed,
                "error": f"worker exited with {proc.returncode}: {proc.stderr[-600:]}",
            }
        return json.loads(out.read_text())


def _fmt(row: dict, part: str) -> str:
    r = row.get(part, {})
    return f"{r['images_per_second']:8.1f}" if r.get("ok") else "  failed"


def plot(result: dict, path: Path) -> None:
    """Training and inference rates and peak memory, one bar per measurement."""
    rows = result["rows"]

    def rate(row: dict, part: str) -> float | None:
        m = row.get(part) or {}
        return m.get("images_per_second") if m.get("ok") else None

    bar_panels(
        path,
        [f"{r['preset']} {r['variant']} ({r['device_type']})" for r in rows],
        [
            ("training images / s", [rate(r, "train") for r in rows]),
            ("inference images / s", [rate(r, "inference") for r in rows]),
            ("peak resident memory (MiB)", [r.get("peak_rss_mib") for r in rows]),
        ],
        f"{result['machine']['cpu']}, {result['threads']} CPU threads",
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["seed", "compact", "hifi"])
    p.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help=f"fp32 or FLAG+FLAG... of {FLAGS}"
    )
    p.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: the preset's)"
    )
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (the first holds compilation)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement process")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    for v in args.variants:
        parse_variant(v)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    if args.worker:  # one measurement, written as one row
        row = measure(args.presets[0], args.variants[0], devices[0], args)
        Path(args.out).write_text(json.dumps(row, indent=2))
        return 0

    command = command_line()
    rows = []
    started = time.perf_counter()
    for device in devices:
        for preset in args.presets:
            for variant in args.variants:
                row = _run_one(preset, variant, device, args)
                rows.append(row)
                print(
                    f"{device:4s} {preset:8s} {variant:26s} train {_fmt(row, 'train')} img/s  "
                    f"infer {_fmt(row, 'inference')} img/s  rss {row.get('peak_rss_mib', float('nan')):.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    result = {
        "benchmark": "throughput",
        "input": "synthetic uniform random uint8 images (throughput does not depend on pixel values)",
        "presets": args.presets,
        "variants": args.variants,
        "devices": devices,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "threads": args.threads,
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "command": command,
        "machine": machine_info(),
    }
    save_result(result, args.out, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
