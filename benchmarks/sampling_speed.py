"""Sampling throughput of every prior, codes decoded to images included; one JSON result.

    python -m benchmarks.sampling_speed --threads 2 --out benchmarks/results/sampling_speed.json
    python -m benchmarks.sampling_speed --run8 runs/seed --run32 runs/hifi ...   # trained runs

For each prior and each grid (8x8 with 16 codes under the ``compact`` VQ-VAE, 32x32
with 512 codes under ``hifi``; ``--preset8`` / ``--preset32`` pick others) it draws
``--n8`` / ``--n32`` samples in batches and decodes them, and reports images per
second (wall clock) beside the CPU time the process used: on a busy machine the wall
clock measures the other jobs too, while ``images_per_cpu_second * threads`` estimates
the rate on idle cores. ``--device cuda`` draws and decodes on the GPU. Throughput
does not depend on the weights, so untrained networks are used unless a trained run is
given. The PixelCNN is timed both naively (the whole grid for every cell) and with its
receptive-field band; on 32x32 grids fewer PixelCNN samples are drawn
(``--n32-pixelcnn``) because it is slow, and the rate is per image either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import oasisvq
from benchmarks.machine import command_line, machine_info, save_result
from benchmarks.plots import bar_panels
from oasisvq.model.presets import get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import Prior
from oasisvq.prior.registry import PRIORS, build_prior
from oasisvq.prior.sampling import sample_codes
from oasisvq.runs import Run, checkpoint


def _vq(run: str | None, preset: str, device: str, tmp: Path) -> Run:
    """The trained run ``run``, else an untrained ``preset`` saved as a run in ``tmp``."""
    if not run:
        torch.manual_seed(0)
        cfg = get_preset(preset)
        checkpoint.save(
            tmp, "epoch-0000", VQVAE(cfg), {"kind": "vqvae", "model": cfg.to_dict()}, {}
        )
        run = str(tmp)
    return oasisvq.load(run, device)


def _prior(run: Run, name: str) -> Prior:
    cfg = run.config
    pcfg = dataclasses.replace(
        PRIORS[name], codebook_size=cfg.quantizer.codebook_size, grid=(cfg.grid, cfg.grid)
    )
    torch.manual_seed(0)
    return build_prior(pcfg).to(run.device).eval()


def _draw(
    prior: Prior, n: int, precision: str, window: bool | None, steps: int | None
) -> tuple[torch.Tensor, float, float]:
    """``n`` grids drawn at ``precision`` after a small warm-up: codes, wall and CPU s."""
    original = prior.sample
    if window is not None:  # PixelCNN: banded or naive recomputation
        prior.sample = functools.partial(original, window=window)  # type: ignore[method-assign]
    try:
        options = functools.partial(oasisvq.SamplingOptions, steps=steps, precision=precision)
        sample_codes(prior, min(n, 4), None, options(seed=0))
        w0, c0 = time.perf_counter(), time.process_time()
        codes = sample_codes(prior, n, None, options(seed=1))
        return codes, time.perf_counter() - w0, time.process_time() - c0
    finally:
        prior.sample = original  # type: ignore[method-assign]


def _time(
    run: Run,
    prior: Prior,
    n: int,
    precisions: list[str],
    window: bool | None = None,
    steps: int | None = None,
) -> list[dict]:
    """Draw ``n`` grids and decode them in each precision; one row per precision with
    wall and CPU seconds of sampling + decoding. A masked prior also draws in that
    precision (its network runs in it); autoregressive priors always draw in fp32."""
    drawn: dict[str, tuple[torch.Tensor, float, float]] = {}
    rows = []
    for precision in precisions:
        draw_precision = "fp32" if prior.likelihood == "exact" else precision
        if draw_precision not in drawn:
            drawn[draw_precision] = _draw(prior, n, draw_precision, window, steps)
        codes, sample_wall, sample_cpu = drawn[draw_precision]
        run.decode(codes[:2], precision=precision)
        w0, c0 = time.perf_counter(), time.process_time()
        run.decode(codes, precision=precision)
        decode_wall, decode_cpu = time.perf_counter() - w0, time.process_time() - c0
        wall, cpu = sample_wall + decode_wall, sample_cpu + decode_cpu
        rows.append(
            {
                "draw_precision": draw_precision,
                "decode_precision": precision,
                "n": n,
                "seconds": wall,
                "sample_seconds": sample_wall,
                "decode_seconds": decode_wall,
                "cpu_seconds": cpu,
                "images_per_second": n / wall,
                "images_per_cpu_second": n / max(cpu, 1e-9),
            }
        )
    return rows


def _precisions(row: dict) -> str:
    return f"draw {row.get('draw_precision', 'fp32')}, decode {row['decode_precision']}"


def plot(result: dict, path: Path) -> None:
    """Images per second and seconds per 1000 images, one bar per measurement."""
    rows = result["results"]
    bar_panels(
        path,
        [f"{r['prior']} {r['grid']} {r['mode']}, {_precisions(r)}" for r in rows],
        [
            ("images / s (sampling + decoding)", [r["images_per_second"] for r in rows]),
            ("seconds per 1000 images", [r["seconds_per_1000"] for r in rows]),
        ],
        f"{result['machine']['cpu']}, {result['machine']['torch_threads']} threads",
    )


def _measure_grid(run: Run, grid: str, n: int, args: argparse.Namespace) -> list[dict]:
    """Every prior of ``--priors`` on ``run``'s grid, in each of its sampling modes."""
    rows = []
    for name in args.priors.split(","):
        prior = _prior(run, name)
        steps: int | None = None
        if prior.cfg.arch == "transformer":
            modes: list[tuple[str, int, bool | None, int | None]] = [("kv-cache", n, None, None)]
        elif prior.cfg.arch == "maskgit":
            modes = [(f"{s} steps", n, None, s) for s in map(int, args.steps.split(","))]
        elif grid == "8x8":
            modes = [("band", n, True, steps), ("naive", args.n8_naive, False, steps)]
        else:
            modes = [("band", args.n32_pixelcnn, True, steps)]
        for mode, count, window, steps in modes:
            for r in _time(run, prior, count, args.precision.split(","), window, steps):
                row = {
                    "prior": name,
                    "vqvae": run.config.name,
                    "grid": grid,
                    "codebook_size": prior.cfg.codebook_size,
                    "mode": mode,
                    **r,
                }
                row["seconds_per_1000"] = 1000 / r["images_per_second"]
                row["idle_estimate_seconds_per_1000"] = 1000 / (
                    r["images_per_cpu_second"] * args.threads
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)"
    )
    p.add_argument("--n8", type=int, default=1000)
    p.add_argument("--n32", type=int, default=128)
    p.add_argument(
        "--n8-naive", type=int, default=200, help="samples for the naive PixelCNN on 8x8 grids"
    )
    p.add_argument("--n32-pixelcnn", type=int, default=4)
    p.add_argument("--priors", default=",".join(PRIORS), help="comma-separated prior names")
    p.add_argument("--steps", default="4,8,16", help="parallel steps of masked priors to time")
    p.add_argument(
        "--precision",
        default="fp32,bf16",
        help="precisions, comma-separated: fp32, bf16 (decoding; masked priors also draw in it)",
    )
    p.add_argument("--run8", default=None, help="a trained 8x8 VQ-VAE run (default: --preset8)")
    p.add_argument("--run32", default=None, help="a trained 32x32 VQ-VAE run (default: --preset32)")
    p.add_argument("--preset8", default="compact", help="untrained 8x8 VQ-VAE without --run8")
    p.add_argument("--preset32", default="hifi", help="untrained 32x32 VQ-VAE without --run32")
    p.add_argument("--skip32", action="store_true")
    p.add_argument(
        "--device", default="cpu", help="cpu or cuda (codes are drawn and decoded there)"
    )
    p.add_argument("--out", default="benchmarks/results/sampling_speed.json")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    results = []
    grids = [("8x8", args.run8, args.preset8, args.n8)] + (
        [] if args.skip32 else [("32x32", args.run32, args.preset32, args.n32)]
    )
    load_before = os.getloadavg()
    for grid, run_dir, preset, n in grids:
        with tempfile.TemporaryDirectory(prefix="sampling_speed_") as tmp:
            run = _vq(run_dir, preset, args.device, Path(tmp))
            results += _measure_grid(run, grid, n, args)
    out = {
        "benchmark": "sampling_speed",
        "command": command_line(),
        "device": str(args.device),
        "note": "images per second include decoding the codes to images; priors are untrained (throughput does not depend on the weights), the VQ-VAE comes from --run8/--run32 when given",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
        "priors": args.priors.split(","),
        "grids": [grid for grid, *_ in grids],
        "results": results,
    }
    save_result(out, args.out, plot)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
