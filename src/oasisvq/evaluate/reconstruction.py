"""Honest reconstruction measurements: every image goes through the quantizer."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oasisvq import metrics
from oasisvq.data.loader import get_split
from oasisvq.data.slices import SliceSet
from oasisvq.data.tree import load_folder
from oasisvq.data.volumes3d import VolumeSet
from oasisvq.errors import ConfigError
from oasisvq.evaluate.reference import spread
from oasisvq.evaluate.volumes import evaluate_volumes, reconstruct_volume_files, write_volume_report
from oasisvq.figures import reconstruction_figure
from oasisvq.io import atomic_write, check_writable, write_json
from oasisvq.model.vqvae import VQVAE
from oasisvq.runs import Run
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
    pick = spread(len(slices), 8)
    reconstruction_figure(
        slices.images[pick].astype(np.float32) / 255.0,
        r["codes"][pick],
        r["recon"][pick],
        out_dir / "reconstructions.png",
        ssim_values=r["ssim"][pick],
        n=len(pick),
    )


def bits(codebook_size: int, cells: int) -> float:
    return cells * math.log2(codebook_size)


def evaluate_run(
    run: Run,
    split: str,
    data_root: str | None = None,
    out_dir: Path | None = None,
    json_path: Path | None = None,
    batch_size: int = 64,
    skip_bad: bool = False,
) -> dict:
    """Measure ``run``'s reconstructions of ``split`` (of its data, or ``data_root`` read
    with its options); figures and per-image CSV go to ``out_dir`` (default
    ``RUN/eval-SPLIT``). Returns the summary."""
    root = data_root if data_root is not None else run.data_root
    data = get_split(run.splits(data_root, skip_bad), split, root or "built-in data")
    out = out_dir or run.path / f"eval-{split}"
    check_writable(out)
    if isinstance(data, VolumeSet):
        summary, r = evaluate_volumes(run.vqvae, data, run.device, min(batch_size, 2))
        summary.update(split=split, data=root)
        write_volume_report(out, data, summary, r, json_path)
        return summary
    summary, r = evaluate_slices(run.vqvae, data, run.device, batch_size)
    summary.update(split=split, data=root or "built-in MNI152")
    write_report(out, data, summary, r, json_path)
    return summary


def reconstruct_files(
    run: Run,
    source: Path,
    out: Path,
    json_path: Path | None = None,
    batch_size: int = 64,
    skip_bad: bool = False,
    mask: Path | None = None,
) -> dict:
    """Reconstruct an image file or a folder of images into ``out``: ``images/<stem>_recon.png``
    and ``<stem>_codes.npy`` beside the report; for a 3D run volume files (and ``mask``),
    see :func:`reconstruct_volume_files`. Returns the summary."""
    if run.dims == 3:
        return reconstruct_volume_files(run, source, out, json_path, min(batch_size, 2), mask)
    if mask is not None:
        raise ConfigError(f"--mask {mask}: masks go with runs of whole volumes")
    opts = run.data_options
    slices = load_folder(source, opts.size, opts.fit, skip_bad)
    check_writable(out)
    summary, r = evaluate_slices(run.vqvae, slices, run.device, batch_size)
    summary["input"] = str(source)
    write_report(out, slices, summary, r, json_path)
    (out / "images").mkdir(exist_ok=True)
    for src, img, codes in zip(slices.sources, r["recon"], r["codes"], strict=True):
        stem = Path(src).stem
        pixels = np.round(img * 255).astype(np.uint8)
        atomic_write(
            out / "images" / f"{stem}_recon.png",
            lambda t, x=pixels: Image.fromarray(x).save(t, format="PNG"),
        )
        atomic_write(
            out / "images" / f"{stem}_codes.npy", lambda t, c=codes: np.save(t.open("wb"), c)
        )
    return summary
