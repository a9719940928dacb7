"""Honest reconstruction measurements: every image goes through the quantizer."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.slices import SliceSet
from oasisvq.evaluate import metrics
from oasisvq.evaluate.figures import reconstruction_figure
from oasisvq.io import write_json
from oasisvq.model.vqvae import VQVAE
from oasisvq.train.vqvae_task import reconstruct_all


def evaluate_slices(
    model: VQVAE, slices: SliceSet, device: torch.device, batch_size: int = 64
) -> tuple[dict, dict]:
    """Reconstruct ``slices`` in fp32 and summarise. Returns ``(summary, per_image)``."""
    r = reconstruct_all(model, slices.images, device, batch_size, keep=True)
    q = model.cfg.quantizer
    counts = r["counts"]
    p = counts / max(1, counts.sum())
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    summary = {
        "n_images": len(slices),
        **metrics.summarise({k: r[k] for k in ("ssim", "ms_ssim", "psnr", "mse")}),
        "codes_used": metrics.codes_used(counts),
        "codebook_size": q.codebook_size,
        "perplexity": metrics.perplexity(counts),
        "grid": model.cfg.grid,
        "bits_per_image": model.cfg.bits_per_image,
        "bytes_per_image": model.cfg.bits_per_image / 8,
        "entropy_bits_per_image": entropy * model.cfg.grid**2,
        "preset": model.cfg.name,
    }
    return summary, r


def write_report(
    out_dir: Path, slices: SliceSet, summary: dict, r: dict, json_path: Path | None = None
) -> None:
    """Write summary JSON, per-image CSV and the reconstruction figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in filter(None, [out_dir / "metrics.json", json_path]):
        write_json(path, summary)
    with (out_dir / "per_image.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "ssim", "ms_ssim", "psnr", "mse"])
        for i, src in enumerate(slices.sources):
            w.writerow([src, *(f"{r[k][i]:.6f}" for k in ("ssim", "ms_ssim", "psnr", "mse"))])
    pick = _spread(len(slices), 8)
    reconstruction_figure(
        slices.images[pick].astype(np.float32) / 255.0,
        r["codes"][pick],
        r["recon"][pick],
        out_dir / "reconstructions.png",
        ssim_values=r["ssim"][pick],
        n=len(pick),
    )


def _spread(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (deterministic)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def bits(codebook_size: int, cells: int) -> float:
    return cells * math.log2(codebook_size)
