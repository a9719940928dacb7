"""The main job, end to end: train a VQ-VAE, measure it, train a prior, sample brains.

``oasisvq demo`` runs it on the built-in MNI152 brain when no data is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.options import DataOptions
from oasisvq.evaluate.reconstruction import evaluate_run
from oasisvq.figures import image_grid
from oasisvq.prior.base import SamplingOptions
from oasisvq.runs import Run
from oasisvq.sample.write import sample_to_folder
from oasisvq.train.prior_run import train_prior
from oasisvq.train.vqvae_run import train_vqvae


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains: chosen so that on the built-in brain it takes a few minutes
    on two CPU cores and ends with reconstructions and samples that look like brains
    (benchmarks/demo.py measures it). The built-in brain has about sixty training
    slices: small images and small batches give many optimiser steps for little work."""

    preset: str = "mid"
    epochs: int = 60
    prior: str | None = "transformer"
    prior_epochs: int = 25
    n_samples: int = 16
    temperature: float = 0.7  # a little below 1: fewer stray codes on so few training slices
    builtin_size: int = 64
    builtin_batch: int = 4
    builtin_lr: float = 2e-3
    prior_batch: int = 8
    prior_lr: float = 2e-3


def run_demo(
    out: str | Path,
    data: str | None = None,
    settings: DemoSettings = DemoSettings(),
    force: bool = False,
) -> dict:
    """Train, evaluate and sample; returns the evaluation summary. Figures go to ``out``."""
    threads = torch.get_num_threads()
    if data is None:
        # the built-in demo's tiny batches gain nothing from a second thread, and two
        # threads wait on each other (many times slower) when another process shares
        # the cores
        torch.set_num_threads(1)
    try:
        return _demo(Path(out), data, settings, force)
    finally:
        torch.set_num_threads(threads)


def _demo(out: Path, data: str | None, settings: DemoSettings, force: bool) -> dict:
    builtin = data is None
    small = {"batch_size": settings.builtin_batch, "lr": settings.builtin_lr} if builtin else {}
    train_vqvae(
        data,
        out,
        preset=settings.preset,
        epochs=settings.epochs,
        force=force,
        data_opts=DataOptions(size=settings.builtin_size) if builtin else None,
        **small,
    )
    run = Run.open(out, "auto")
    split = "test" if "test" in run.splits() else "validate"
    summary = evaluate_run(run, split)
    print(json.dumps(summary, indent=2))
    if settings.prior is not None:
        train_prior(
            out,
            data,
            settings.prior,
            epochs=settings.prior_epochs,
            batch_size=settings.prior_batch,
            lr=settings.prior_lr,
        )
        run = Run.open(out, "auto")
        options = SamplingOptions(temperature=settings.temperature, seed=0)
        sample_to_folder(run, settings.n_samples, out / "samples", settings.prior, options)
        real_beside_samples(run, split, out / "samples" / "codes.npy", out / "demo.png")
    return summary


def real_beside_samples(run: Run, split: str, codes: Path, path: Path, n: int = 8) -> Path:
    """A figure of ``n`` held-out slices (top row) above ``n`` samples (bottom row)."""
    real = np.asarray(run.split(split).images, np.float32) / 255.0
    real = real[np.linspace(0, len(real) - 1, min(n, len(real))).round().astype(int)]
    samples = run.decode(np.load(codes)[:n]).numpy()
    titles = ["held-out"] * len(real) + ["sample"] * len(samples)
    return image_grid(
        np.concatenate([real, samples]), path, ncol=max(len(real), len(samples)), titles=titles
    )
