"""Train (or reuse) a VQ-VAE run and measure it on a split; write one JSON result.

    python -m benchmarks.vqvae_quality --data ../shared/data/alzheimer-mri --preset compact \
        --run runs/compact --split validate --out benchmarks/results/quality-compact.json

Training goes through ``oasisvq train`` (so the preset's ``default_epochs`` unless
``--epochs``); an existing run with a finished history is reused, not retrained.
The result holds the evaluation summary, training time per epoch and the machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import command_line, machine_info, save_result


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument("--preset", required=True)
    p.add_argument("--run", required=True, help="run directory (trained here if it does not exist)")
    p.add_argument("--split", default="validate")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", required=True, help="JSON result file")
    args = p.parse_args()

    run = Path(args.run)
    data = ["--data", args.data] if args.data else []
    train_cmd = [
        sys.executable,
        "-m",
        "oasisvq",
        "train",
        *data,
        "--preset",
        args.preset,
        "--out",
        str(run),
    ]
    if args.epochs:
        train_cmd += ["--epochs", str(args.epochs)]
    if not (run / "history.json").exists():
        start = time.time()
        subprocess.run(train_cmd, check=True)
        print(f"trained in {time.time() - start:.0f} s", file=sys.stderr)
    eval_json = run / f"eval-{args.split}.json"
    eval_cmd = [
        sys.executable,
        "-m",
        "oasisvq",
        "evaluate",
        str(run),
        *data,
        "--split",
        args.split,
        "--json",
        str(eval_json),
    ]
    subprocess.run(eval_cmd, check=True, stdout=subprocess.DEVNULL)
    history = json.loads((run / "history.json").read_text())
    quantizer = json.loads((run / "config.json").read_text())["model"]["quantizer"]
    seconds = [row["epoch_seconds"] for row in history]
    result = {
        "benchmark": "vqvae_quality",
        "preset": args.preset,
        "data": args.data,
        "split": args.split,
        "epochs": len(history),
        "quantizer": {"kind": quantizer["kind"], "levels": quantizer["levels"]},
        "train_seconds_per_epoch": sum(seconds) / len(seconds),
        "train_minutes_total": sum(seconds) / 60,
        "train_images_per_second": sum(r["train_images_per_second"] for r in history)
        / len(history),
        **json.loads(eval_json.read_text()),
        "command": command_line(),
        "commands": [shlex.join(train_cmd), shlex.join(eval_cmd)],
        "machine": machine_info(),
    }
    save_result(result, args.out)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "preset",
                    "split",
                    "ssim_mean",
                    "psnr_mean",
                    "codes_used",
                    "bits_per_image",
                    "train_seconds_per_epoch",
                )
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
