"""How far blur alone moves the Fréchet distance of ``oasisvq evaluate-samples``; one JSON result.

    python -m benchmarks.fd_blur --run runs/mid --split validate \
        --out benchmarks/results/fd_blur-mid.json

Decoded images (reconstructions and samples) are smoother than real slices. To read a
sample Fréchet distance, this gives the same distance for *real* training images
blurred by a Gaussian of growing width: the held-out split against ``--n`` random
training images (the reference subset ``evaluate-samples`` draws for the same seed of an
unconditional prior), each blurred with ``scipy.ndimage.gaussian_filter`` of ``sigma``
pixels. Sigma 0 is the real-vs-real distance. The feature network is the run's cached one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

import oasisvq
from benchmarks import plots
from benchmarks.machine import command_line, machine_info, save_result
from oasisvq.evaluate.features import extract, feature_net, frechet_distance
from oasisvq.evaluate.reference import frechet_reference


def blur_distances(args: argparse.Namespace) -> dict:
    run = oasisvq.load(args.run)
    root = args.data if args.data is not None else run.data_root
    splits = run.splits(args.data)
    held, train = run.split(args.split, args.data), run.split("train", args.data)
    fnet = feature_net(run.path, root, run.saved["data"], train, splits.get("validate"))
    rng = np.random.default_rng(args.seed)
    f_held, ref_idx, f_ref = frechet_reference(fnet, held.images, train.images, args.n, rng)
    reference = np.asarray(train.images)[ref_idx].astype(np.float32) / 255.0  # (n, S, S)
    rows = []
    for sigma in args.sigmas:
        blurred = gaussian_filter(reference, sigma=(0, sigma, sigma)) if sigma > 0 else reference
        fd = frechet_distance(f_held["features"], extract(fnet, blurred)["features"])
        rows.append({"sigma": sigma, "frechet_distance": fd})
        print(json.dumps(rows[-1]), flush=True)
    return {
        "benchmark": "fd_blur",
        "run": str(run.path),
        "preset": run.config.name,
        "split": args.split,
        "n_held_out": len(held),
        "n_reference": len(ref_idx),
        "seed": args.seed,
        "frechet_distance_real_vs_real": frechet_distance(f_held["features"], f_ref["features"]),
        "rows": rows,
        "command": command_line(),
        "machine": machine_info(),
    }


def plot(result: dict, path: Path) -> None:
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    sigmas = [r["sigma"] for r in result["rows"]]
    ratio = [
        r["frechet_distance"] / result["frechet_distance_real_vs_real"] for r in result["rows"]
    ]
    ax.plot(sigmas, ratio, "o-")
    ax.set(
        xlabel="Gaussian blur sigma (px)",
        ylabel="FD / real-vs-real",
        yscale="log",
        title=f"real training slices blurred, {result['split']}",
    )
    ax.grid(alpha=0.3)
    plots.save(fig, path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained VQ-VAE run (its feature network)")
    p.add_argument("--data", default=None, help="data root (default: the run's)")
    p.add_argument("--split", default="validate")
    p.add_argument("--n", type=int, default=1000, help="training images in the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--out", required=True, help="JSON result; the plot goes beside it (.png)")
    args = p.parse_args()
    save_result(blur_distances(args), args.out, plot)


if __name__ == "__main__":
    main()
