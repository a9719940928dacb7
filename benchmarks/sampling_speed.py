"""Sampling throughput of every prior, codes decoded to images included; one JSON result.

    python benchmarks/sampling_speed.py --threads 2 --out benchmarks/results/sampling_speed.json
    python benchmarks/sampling_speed.py --run8 runs/seed --run32 runs/hifi ...   # trained runs

For each prior and each grid (8x8 with 16 codes under the ``compact`` VQ-VAE, 32x32
with 512 codes under ``hifi``; ``--preset8`` / ``--preset32`` pick others) it draws
``--n8`` / ``--n32`` samples in batches and decodes them, and reports images per
second (wall clock) beside the CPU time the process used: on a busy machine the wall
clock measures the other jobs too, while ``images_per_cpu_second * threads`` estimates
the rate on idle cores. ``--device cuda`` draws and decodes on the GPU. Throughput
does not depend on the weights, so untrained networks are used unless a trained run is
given. The PixelCNN is timed both naively (the whole grid for every cell) and with its
receptive-field band; on 32x32 grids fewer PixelCNN samples are drawn
(``--n32-pixelcnn``) because it is slow, and the rate is per image either way. The masked
prior (maskgit) is timed at each number of parallel steps in ``--steps``.
``--draw-precision bf16`` draws the codes under bf16 autocast (decoding has its own
``--precision``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, sample_options  # noqa: E402
from plots import bar_panels  # noqa: E402

from oasisvq.api import VQModel, load  # noqa: E402
from oasisvq.model.presets import get_preset  # noqa: E402
from oasisvq.model.vqvae import VQVAE  # noqa: E402
from oasisvq.prior.registry import PRIORS, build_prior  # noqa: E402
from oasisvq.sample.sampler import decode_codes, sample_codes  # noqa: E402


def _vq(run: str | None, preset: str, device: str) -> VQModel:
    if run:
        return load(run, device)
    torch.manual_seed(0)
    return VQModel(VQVAE(get_preset(preset)), device=device)


def _prior(model: VQModel, name: str):
    cfg = model.config
    pcfg = dataclasses.replace(
        PRIORS[name], codebook_size=cfg.quantizer.codebook_size, grid=(cfg.grid, cfg.grid)
    )
    torch.manual_seed(0)
    return build_prior(pcfg).to(model.device).eval()


def _modes(prior, grid: str, n: int, args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    """``(mode, samples, sample() keywords)`` to time for ``prior`` on ``grid``."""
    if prior.cfg.arch == "transformer":
        return [("kv-cache", n, {})]
    if prior.cfg.arch == "maskgit":
        return [(f"{s} steps", n, {"steps": s}) for s in map(int, args.steps.split(","))]
    if grid == "8x8":  # PixelCNN: banded or naive recomputation
        return [("band", n, {"window": True}), ("naive", args.n8_naive, {"window": False})]
    return [("band", args.n32_pixelcnn, {"window": True})]


def _time(
    model: VQModel, prior, n: int, precisions: list[str], kw: dict, draw_precision: str = "fp32"
) -> list[dict]:
    """Draw ``n`` grids once (``prior.sample`` keywords ``kw``, under bf16 autocast when
    ``draw_precision`` says so) and decode them in each precision (after a small warm-up);
    one row per precision with wall and CPU seconds of sampling + decoding."""
    bf16 = draw_precision == "bf16"
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with sample_options(prior, **kw), autocast:
        sample_codes(prior, min(n, 4), seed=0)
        w0, c0 = time.perf_counter(), time.process_time()
        codes = sample_codes(prior, n, seed=1)
        sample_wall, sample_cpu = time.perf_counter() - w0, time.process_time() - c0
    rows = []
    for precision in precisions:
        decode_codes(model, codes[:2], precision=precision)
        w0, c0 = time.perf_counter(), time.process_time()
        decode_codes(model, codes, precision=precision)
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
    p.add_argument(
        "--precision", default="fp32,bf16", help="decoding precisions, comma-separated: fp32, bf16"
    )
    p.add_argument(
        "--draw-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="precision of drawing the codes (bf16: under autocast)",
    )
    p.add_argument(
        "--steps",
        default="8",
        help="parallel steps of the masked prior, comma-separated, e.g. 4,8,16",
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
    for grid, run, preset, n in grids:
        model = _vq(run, preset, args.device)
        for name in args.priors.split(","):
            prior = _prior(model, name)
            for mode, count, kw in _modes(prior, grid, n, args):
                precisions = args.precision.split(",")
                for r in _time(model, prior, count, precisions, kw, args.draw_precision):
                    row = {
                        "prior": name,
                        "vqvae": model.config.name,
                        "grid": grid,
                        "codebook_size": prior.cfg.codebook_size,
                        "mode": mode,
                        **r,
                    }
                    row["seconds_per_1000"] = 1000 / r["images_per_second"]
                    row["idle_estimate_seconds_per_1000"] = 1000 / (
                        r["images_per_cpu_second"] * args.threads
                    )
                    results.append(row)
                    print(json.dumps(row), flush=True)
    out = {
        "benchmark": "sampling_speed",
        "command": shlex.join([sys.executable, *sys.argv]),
        "device": str(args.device),
        "note": "images per second include decoding the codes to images; priors are untrained (throughput does not depend on the weights), the VQ-VAE comes from --run8/--run32 when given",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    bar_panels(
        Path(args.out).with_suffix(".png"),
        [f"{r['prior']} {r['grid']} {r['mode']}, decode {r['decode_precision']}" for r in results],
        [
            ("images / s (sampling + decoding)", [r["images_per_second"] for r in results]),
            ("seconds per 1000 images", [r["seconds_per_1000"] for r in results]),
        ],
        f"{out['machine']['cpu']}, {out['machine']['torch_threads']} threads",
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
