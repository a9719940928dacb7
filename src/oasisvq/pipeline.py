"""The main job, end to end: train a VQ-VAE, measure it, train a prior, sample brains.

``oasisvq demo`` runs it on the built-in MNI152 brain when no data is given.
"""

from __future__ import annotations

import json
from pathlib import Path

from oasisvq.data.loader import DataOptions, get_split, load_splits

BUILTIN_BATCH = 8  # VQ-VAE batch size of the demo on the built-in brain


def run_demo(
    out: str | Path,
    data: str | None = None,
    preset: str = "compact",
    epochs: int = 15,
    prior: str | None = "transformer",
    prior_epochs: int = 30,
    n_samples: int = 16,
    force: bool = False,
) -> dict:
    """Train, evaluate and sample; returns the evaluation summary. Figures go to ``out``."""
    from oasisvq.api import load_vqvae
    from oasisvq.evaluate.reconstruction import evaluate_slices, write_report
    from oasisvq.train.distributed import pick_device
    from oasisvq.train.vqvae_run import train_vqvae

    out = Path(out)
    opts = DataOptions()
    # the built-in brain has about a hundred training slices: batches of 8 give four
    # times the optimiser steps of the presets' 32 for the same work
    small = {"batch_size": BUILTIN_BATCH} if data is None else {}
    train_vqvae(data, out, preset=preset, epochs=epochs, force=force, data_opts=opts, **small)
    splits = load_splits(data, opts)
    split = "test" if "test" in splits else "validate"
    device = pick_device("auto")
    summary, r = evaluate_slices(load_vqvae(out, device), get_split(splits, split, data), device)
    summary.update(split=split, data=data or "built-in MNI152")
    write_report(out / f"eval-{split}", get_split(splits, split, data), summary, r)
    print(json.dumps(summary, indent=2))
    if prior is not None:
        _prior_and_samples(out, data, prior, prior_epochs, n_samples)
    return summary


def _prior_and_samples(run: Path, data: str | None, prior: str, epochs: int, n: int) -> None:
    from oasisvq.cli import main
    from oasisvq.prior.run import train_prior

    train_prior(run, data, prior, epochs=epochs)
    code = main(
        [
            "sample",
            str(run),
            "--prior",
            prior,
            "--n",
            str(n),
            "--out",
            str(run / "samples"),
            "--seed",
            "0",
        ]
    )
    if code != 0:
        raise RuntimeError(f"sampling from {run} failed (exit {code})")
