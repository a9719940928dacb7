"""The memorised share a perfect prior would score on each run's decoder; one JSON result.

    python -m benchmarks.memorisation_floor --runs runs/brain3d runs/brain3d-hifi \
        --split validate --out benchmarks/results/memorisation_floor-ixi-t1.json

``oasisvq evaluate-samples`` calls a sample memorised when it lies nearer a training
image or volume (SSIM to the nearest one) than the 99th percentile of the real held-out
ones. A sample is a decoded code grid. This decodes the held-out split's own code grids,
as a prior that drew exactly new subjects would, and measures them by the same rule:
that share is the floor a decoder sets before any prior is trained. Beside it, the share
of the real held-out scans, each against the percentile of the others
(``memorised_share_of_real``). All runs must read the same data. With ``--texture`` the
decoded grids get each run's scan texture, as ``sample --texture`` draws it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import oasisvq
from benchmarks.machine import command_line, machine_info, save_result
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes3d import split_arrays
from oasisvq.evaluate.reference import (
    memorised_shares,
    real_memorised_share,
)
from oasisvq.evaluate.volume_samples import nearest_search


def floor(args: argparse.Namespace) -> dict:
    runs = [oasisvq.load(path) for path in args.runs]
    for run in runs if args.texture else ():
        run.texture()  # fitted for this decoder: checked before any long work
    roots = {run.data_root if args.data is None else args.data for run in runs}
    if len(roots) != 1:
        raise SystemExit(f"memorisation_floor: the runs read different data: {sorted(roots)}")
    rows, real_nn = [], None
    for run in runs:
        nearest = nearest_search(run.dims)
        train, held = run.split("train", args.data), run.split(args.split, args.data)
        if real_nn is None:
            _, real_nn = nearest(split_arrays(held), split_arrays(train))
        codes = run.codes(args.split, held).codes  # (m, *grid), cached in RUN/priors/
        decoded = run.decode(torch.from_numpy(codes))  # (m, *shape) in [0, 1]
        if args.texture:
            decoded = run.texture().apply(decoded, seed=0)
        _, recon_nn = nearest(to_uint8(decoded), split_arrays(train))
        shares = memorised_shares(recon_nn, real_nn)
        rows.append(
            {
                "run": str(run.path),
                "setup": {
                    "preset": run.config.name,
                    "decoder_finetune": run.finetune,
                    "adversarial_weight": run.config.adversarial_weight,
                    "texture": args.texture,
                },
                "nn_ssim_mean": float(recon_nn.mean()),
                "memorised_share": shares["memorised_share"],
                "memorised_share_ci95": shares["memorised_share_ci95"],
            }
        )
        print(run.path, rows[-1]["nn_ssim_mean"], shares["memorised_share"], flush=True)
    return {
        "benchmark": "memorisation_floor",
        "data": next(iter(roots)),
        "split": args.split,
        "n_held_out": len(real_nn),
        "nn_ssim_real_mean": float(real_nn.mean()),
        "nn_ssim_real_p99": float(np.percentile(real_nn, 99)),
        "memorised_share_of_real": real_memorised_share(real_nn),
        "rows": rows,
        "command": command_line(),
        "machine": machine_info(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="trained VQ-VAE runs, same data")
    p.add_argument("--data", default=None, help="data root (default: the runs')")
    p.add_argument("--split", default="validate")
    p.add_argument(
        "--texture",
        action="store_true",
        help="draw each run's scan texture (`oasisvq fit-texture`) onto the decoded grids",
    )
    p.add_argument("--out", required=True, help="JSON result")
    args = p.parse_args()
    save_result(floor(args), args.out)


if __name__ == "__main__":
    main()
