"""Sample quality against sampling temperature, top-k and guidance, for one prior; one JSON result.

    python -m benchmarks.sampling_sweep --run runs/mid --prior transformer --split validate \
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
  99 % of real held-out images are), the same in reconstruction space
  (``memorised_share_recon_space``) and the share of exact training code grids
  (``exact_code_copy_share``);
* for a class-conditional prior, ``class_agreement_samples``: the share of samples the
  feature network assigns the class they were drawn with.

Each draw goes through the measures of ``oasisvq.evaluate.samples`` (``draw`` and
``measure_samples``: memorisation, diversity, Frechet distance, conditions).

``--seeds S`` draws S sample sets per setting (seeds ``--seed`` .. ``--seed + S - 1``)
and reports the mean and standard deviation of each measure: the Fréchet distance of
1000 samples in a 128-dimensional feature space varies from draw to draw by more than a
small change of temperature moves it.

The feature network, the codes and the reconstructions are the run's cached ones, and
every draw uses the conditions ``evaluate-samples`` draws for ``--seed``, so the first
seed's numbers are those ``evaluate-samples`` gives for the same setting.
``--top-k 0`` means no cut. ``--guidance`` (conditional priors only) sweeps the
classifier-free guidance scale: 1 is the prior as trained, above 1 leans each sample
further towards its condition (drawn from the training split, as ``evaluate-samples``
draws them).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

import oasisvq
from benchmarks import plots
from benchmarks.machine import command_line, machine_info, save_result
from oasisvq.evaluate.samples import (
    FLAT_KEYS,
    SampleEvaluation,
    draw,
    measure_samples,
    open_held,
    references,
)

# what a row reports (mean and spread over the draws): key -> (section, key) of the measures
MEASURED = {
    **{
        k: FLAT_KEYS[k]
        for k in (
            "frechet_distance",
            "diversity_ms_ssim_samples",
            "nn_ssim_mean",
            "memorised_share",
        )
    },
    "memorised_share_recon_space": ("memorisation", "memorised_share_recon_space"),
    "exact_code_copy_share": ("memorisation", "exact_code_copy_share"),
    "class_agreement_samples": ("conditions", "class_agreement_samples"),
}


def sweep(args: argparse.Namespace) -> dict:
    run = oasisvq.load(args.run)
    settings = SampleEvaluation(n=args.n, split=args.split, data_root=args.data, n_pairs=args.pairs)
    h = open_held(run, args.prior, settings.split, settings.data_root)
    # the reference, and the conditions of every draw, that evaluate-samples draws for --seed
    rng = np.random.default_rng(args.seed)
    refs = references(h, settings, rng, args.seed)
    real = refs.real
    seeds = [args.seed + i for i in range(args.seeds)]

    def measure(temperature: float, top_k: int, guidance: float, seed: int) -> dict:
        """One draw of ``args.n`` samples at one setting, measured as evaluate-samples
        measures it."""
        options = oasisvq.SamplingOptions(
            temperature=temperature,
            top_k=top_k or None,
            guidance=guidance,
            steps=args.steps,
            seed=seed,
            precision="fp32",
        )
        samples, codes, cond_idx, _ = draw(h, args.n, options, copy.deepcopy(rng))
        found = measure_samples(h, refs, samples, codes, cond_idx, settings, seed)[0]
        return {
            key: found[section][name]
            for key, (section, name) in MEASURED.items()
            if name in found[section]
        }

    fd_real, div_real = real.frechet_real_vs_real, real.diversity
    rows = []
    grid = [(t, k, g) for g in args.guidance for k in args.top_k for t in args.temperatures]
    for t, top_k, g in grid:
        t0 = time.perf_counter()
        draws = [measure(t, top_k, g, s) for s in seeds]
        row: dict = {"temperature": t, "top_k": top_k or None, "guidance": g}
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
        "run": str(run.path),
        "preset": run.config.name,
        "decoder_finetune": run.finetune,  # set when the decoder was trained further
        "adversarial_weight": run.config.adversarial_weight,
        "prior": h.name,
        "split": h.split,
        "n_samples": args.n,
        "n_held_out": len(h.held),
        "seeds": seeds,
        "frechet_distance_real_vs_real": fd_real,
        "diversity_ms_ssim_real": div_real,
        "nn_ssim_real_p99": real.nn_ssim_p99,
        "rows": rows,
        "command": command_line(),
        "machine": machine_info(),
    }


def plot(result: dict, path: Path) -> None:
    plt = plots.pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    scale = result["frechet_distance_real_vs_real"]
    rows = result["rows"]
    # x: guidance when several scales were swept, else temperature; one curve per other setting
    x_key = "guidance" if len({r.get("guidance", 1.0) for r in rows}) > 1 else "temperature"
    other = "temperature" if x_key == "guidance" else "guidance"

    def curve_of(r: dict) -> tuple:
        return (r["top_k"] or 0, r.get(other, 1.0))

    for key in sorted({curve_of(r) for r in rows}):
        curve = [r for r in rows if curve_of(r) == key]
        label = (f"top-k {key[0]}" if key[0] else "no top-k") + f", {other} {key[1]:g}"
        xs = [r.get(x_key, 1.0) for r in curve]
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
    plots.save(fig, path, dpi=120)


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
    p.add_argument("--steps", type=int, default=None, help="parallel steps of a masked prior")
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
