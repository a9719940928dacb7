"""A tiny run for the Studio's tests, trained in seconds: the VQ-VAE and data of
``test_sample_cli`` (two classes, 128x128, 8 codes), an unconditional and a
class-conditional transformer prior, and an evaluation summary."""

from __future__ import annotations

from pathlib import Path

from test_sample_cli import _make_data, _make_vqvae_run

from oasisvq import cli
from oasisvq.train.prior_run import train_prior

SMALL = {"d_model": 32, "n_layers": 1, "n_heads": 2}
FAST = {"device": "cpu", "amp": "off", "batch_size": 8}


def make_run(base: Path) -> Path:
    """Write data to ``base/data`` and a run with priors ``transformer`` and ``tf-class``
    to ``base/run`` (OASISVQ_CACHE must point somewhere of the test's)."""
    _make_data(base / "data")
    run = base / "run"
    _make_vqvae_run(run, base / "data")
    train_prior(run, None, "transformer", epochs=1, options=SMALL, **FAST)
    train_prior(run, None, "transformer", "tf-class", 1, condition="class", options=SMALL, **FAST)
    assert cli.main(["evaluate", str(run), "--split", "validate", "--device", "cpu"]) == 0
    return run
