"""Time ``oasisvq demo`` on the built-in brain and record what a newcomer gets.

    python -m benchmarks.demo --out /tmp/demo --json benchmarks/results/demo.json

Runs the demo as its command does (default settings), then reads its histories and
evaluation: seconds of VQ-VAE and prior training (from the epochs' own timings), the
whole wall time, the test slices' SSIM and PSNR, and the machine. The figure of
held-out slices above samples goes to ``docs/demo.png`` with ``--figure``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from benchmarks.machine import command_line, machine_info, save_result
from oasisvq.pipeline import DemoSettings, run_demo


def _train_seconds(history: Path) -> float:
    with history.open() as f:
        return sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the demo's run folder (replaced)")
    p.add_argument("--json", default="benchmarks/results/demo.json")
    p.add_argument("--figure", default=None, help="also copy RUN/demo.png here")
    args = p.parse_args()
    out = Path(args.out)
    settings = DemoSettings()
    start = time.perf_counter()
    summary = run_demo(out, None, settings, force=out.exists())
    wall = time.perf_counter() - start
    result = {
        "command": command_line(),
        "machine": machine_info(),
        "settings": settings.__dict__,
        "wall_seconds": wall,
        "vqvae_train_seconds": _train_seconds(out / "history.csv"),
        "prior_train_seconds": _train_seconds(out / "priors" / settings.prior / "history.csv"),
        "split": summary["split"],
        "n_images": summary["n_images"],
        "ssim": summary["ssim_mean"],
        "psnr": summary["psnr_mean"],
        "codes_used": summary["codes_used"],
    }
    save_result(result, Path(args.json))
    if args.figure:
        shutil.copyfile(out / "demo.png", args.figure)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
