"""Sample quality against sampling temperature, top-k, guidance and steps, for one prior; one JSON result.

    python benchmarks/sampling_sweep.py --run runs/mid --prior transformer --split validate \
        --temperatures 0.9 1.0 1.1 --seeds 3 --out benchmarks/results/sweep-mid-transformer.json

A lower temperature (or a top-k cut) drops the unlikely codes whose artefacts make
samples look unlike real slices, at the cost of diversity and, in the limit, of
copying the training set. For every setting this draws ``--n`` samples and measures
what ``oasisvq evaluate-samples`` measures about them, on the held-out ``--split``
(tune on ``validate``; the test split is for the final check):

* ``frechet_distance`` to the real held-out images, and ``fd_ratio`` = that over the
  real-vs-real distance (held-out images against as many training images);
* ``diversity_ms_ssim_samples`` beside ``diversity_ms_ssim_real`` (lower = more diverse);
* ``nn_ssim_mean`` and ``memorised_share`` (samples closer to a training image than
  99 % of real held-out images are).

``--seeds S`` draws S sample sets per setting (seeds ``--seed`` .. ``--seed + S - 1``)
and reports the mean and standard deviation of each measure: the Fréchet distance of
1000 samples in a 128-dimensional feature space varies from draw to draw by more than a
small change of temperature moves it.

The feature network, the codes and the reconstructions are the run's cached ones, so
the numbers are those ``evaluate-samples`` gives for the same setting and seed.
``--top-k 0`` means no cut. ``--guidance`` (conditional priors only) sweeps the
classifier-free guidance scale: 1 is the prior as trained, above 1 leans each sample
further towards its condition (drawn from the training split, as ``evaluate-samples``
draws them). ``--steps`` (masked priors only) sweeps the number of parallel decoding
steps; unset, the prior's own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, sample_options, save_result  # noqa: E402

import oasisvq  # noqa: E402
from oasisvq.data.loader import get_split, load_splits  # noqa: E402
from oasisvq.evaluate.features import extract, feature_net, frechet_distance  # noqa: E402
from oasisvq.evaluate.samples import (  # noqa: E402
    mean_pairwise_similarity,
    nearest_neighbours,
    real_reference,
)
from oasisvq.prior.data import cached_codes  # noqa: E402
from oasisvq.prior.sampling import decode_codes, sample_codes  # noqa: E402
from oasisvq.train.prior_run import data_options, load_prior, resolve_prior_name, vqvae_config  # noqa: E402


def sweep(args: argparse.Namespace) -> dict:
    run = Path(args.run)
    model = oasisvq.load(run, "cpu")
    name = resolve_prior_name(run, args.prior)
    prior, _ = load_prior(run, name, torch.device("cpu"))
    vq = vqvae_config(run)
    root = args.data or vq.get("data_root")
    splits = load_splits(root, data_options(vq))
    held, train = get_split(splits, args.split, root), get_split(splits, "train", root)
    seeds = [args.seed + i for i in range(args.seeds)]
    rng = np.random.default_rng(args.seed)
    cond = None
    if prior.cfg.condition:  # conditions drawn from the training split, as evaluate-samples does
        train_codes = cached_codes(run, "train", train, model.vqvae, torch.device("cpu"))
        cond = train_codes.cond(rng.integers(0, len(train_codes), args.n))
    fnet = feature_net(run, root, vq["data"], train, splits.get("validate"))
    real = real_reference(
        fnet, held.images, train.images, args.n, rng, n_pairs=args.pairs, seed=args.seed
    )
    f_held, fd_real, threshold = real.held["features"], real.frechet_real_vs_real, real.nn_ssim_p99
    div_real = real.diversity

    def measure(
        temperature: float, top_k: int, guidance: float, steps: int | None, seed: int
    ) -> dict:
        """One draw of ``args.n`` samples at one setting, measured."""
        with sample_options(prior, steps=steps):
            codes = sample_codes(
                prior, args.n, cond, temperature, top_k or None, seed, guidance=guidance
            )
        samples = decode_codes(model, codes).numpy()
        _, nn_ssim = nearest_neighbours(samples, train.images)
        return {
            "frechet_distance": frechet_distance(f_held, extract(fnet, samples)["features"]),
            "diversity_ms_ssim_samples": mean_pairwise_similarity(samples, args.pairs, seed)[0],
            "nn_ssim_mean": float(nn_ssim.mean()),
            "memorised_share": float((nn_ssim > threshold).mean()),
        }

    rows = []
    settings = [
        (t, k, g, st)
        for st in args.steps
        for g in args.guidance
        for k in args.top_k
        for t in args.temperatures
    ]
    for t, top_k, g, steps in settings:
        t0 = time.perf_counter()
        draws = [measure(t, top_k, g, steps, s) for s in seeds]
        row: dict = {"temperature": t, "top_k": top_k or None, "guidance": g, "steps": steps}
        for key in draws[0]:  # mean over the draws, and their spread
            values = np.array([d[key] for d in draws])
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        row.update(
            fd_ratio=row["frechet_distance"] / fd_real,
            diversity_gap=row["diversity_ms_ssim_samples"] - div_real,
            per_seed=draws,
            seconds=time.perf_counter() - t0,
        )
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_seed"}), flush=True)
    return {
        "benchmark": "sampling_sweep",
        "run": str(run),
        "preset": model.config.name,
        "decoder_finetune": vq.get("finetune"),  # set when the decoder was trained further
        "adversarial_weight": model.config.adversarial_weight,
        "prior": name,
        "split": args.split,
        "n_samples": args.n,
        "n_held_out": len(held),
        "seeds": seeds,
        "frechet_distance_real_vs_real": fd_real,
        "diversity_ms_ssim_real": div_real,
        "nn_ssim_real_p99": threshold,
        "rows": rows,
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    scale = result["frechet_distance_real_vs_real"]
    rows = result["rows"]
    # x: guidance, else steps, when several were swept, else temperature; one curve per
    # value of the other settings
    defaults = {"temperature": 1.0, "guidance": 1.0, "steps": None}
    swept = [k for k in ("guidance", "steps") if len({r.get(k, defaults[k]) for r in rows}) > 1]
    x_key = swept[0] if swept else "temperature"
    others = [k for k in defaults if k != x_key]

    def curve_of(r: dict) -> tuple:
        return (r["top_k"] or 0, *(r.get(k, defaults[k]) for k in others))

    for key in sorted({curve_of(r) for r in rows}, key=str):
        curve = [r for r in rows if curve_of(r) == key]
        label = ", ".join(
            [f"top-k {key[0]}" if key[0] else "no top-k"]
            + [f"{k} {v:g}" for k, v in zip(others, key[1:], strict=True) if v is not None]
        )
        xs = [r.get(x_key, defaults[x_key]) for r in curve]
        fd_err = [(r["frechet_distance_std"] or 0) / scale for r in curve]
        div_err = [r["diversity_ms_ssim_samples_std"] or 0 for r in curve]
        a.errorbar(xs, [r["fd_ratio"] for r in curve], fd_err, fmt="o-", capsize=3, label=label)
        b.errorbar(
            xs, [r["diversity_gap"] for r in curve], div_err, fmt="o-", capsize=3, label=label
        )
    a.set(xlabel=x_key, ylabel="Frechet distance / real-vs-real", title="fidelity")
    b.set(xlabel=x_key, ylabel="MS-SSIM samples - real", title="diversity gap (0 = real)")
    b.axhline(0, color="grey", lw=0.8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{result['preset']} / {result['prior']}, {result['split']}, n={result['n_samples']}, "
        f"{len(result['seeds'])} draws per point (bars: std)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained VQ-VAE run with a trained prior")
    p.add_argument("--prior", default=None, help="prior name (default: the run's only prior)")
    p.add_argument("--data", default=None, help="data root (default: the run's)")
    p.add_argument("--split", default="validate")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=2000, help="pairs for the diversity mean")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.85])
    p.add_argument("--top-k", type=int, nargs="+", default=[0], help="0 = no cut")
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0],
        help="classifier-free guidance scales (conditional priors; 1 = none)",
    )
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[None],
        help="parallel decoding steps of a masked prior (default: the prior's own)",
    )
    p.add_argument("--seed", type=int, default=0, help="first sampling seed")
    p.add_argument(
        "--seeds", type=int, default=1, help="draws per setting (seed, seed+1, ...): mean and std"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="JSON result; the plot goes beside it (.png)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    save_result(sweep(args), args.out, plot)


if __name__ == "__main__":
    main()
