"""OASISVQ: discrete codes of brain MRI with a VQ-VAE, and new brains from a learned prior.

Two lines load a trained run::

    run = oasisvq.load("runs/compact")
    codes = run.encode(images)          # (N, S, S) in [0, 1] -> (N, h, w) int64
"""

from __future__ import annotations

from pathlib import Path

import torch

from oasisvq.prior.base import SamplingOptions
from oasisvq.runs import Run

__all__ = ["Run", "SamplingOptions", "load"]
__version__ = "0.1.0"


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Open a trained VQ-VAE run (see :class:`oasisvq.runs.Run`)."""
    return Run.open(run_dir, device)
