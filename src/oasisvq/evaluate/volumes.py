"""Reconstruction measurements of whole volumes (3D runs): every volume goes through the
quantizer; SSIM and MS-SSIM are their 3D definitions (``metrics.ssim3d``,
``metrics.ms_ssim3d``), over the whole cropped volume and, for SSIM and PSNR, also
inside the brain mask (``*_brain``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from oasisvq import metrics
from oasisvq.data.nifti import write_nifti
from oasisvq.data.volumes import find_volumes, volume_stem
from oasisvq.data.volumes3d import VolumeSet, prepare_volume
from oasisvq.errors import ConfigError, DataError
from oasisvq.figures import orthogonal_views_figure, volume_views
from oasisvq.io import atomic_write, check_writable, write_json
from oasisvq.model.vqvae import VQVAE
from oasisvq.runs import Run
from oasisvq.train.vqvae_task import MASKED, reconstruct_all

MEASURES = ("ssim", "ms_ssim", "psnr", "mse")
FIGURE_ROWS = 4  # subjects in the orthogonal-views figure


def evaluate_volumes(
    model: VQVAE, volumes: VolumeSet, device: torch.device, batch_size: int = 2
) -> tuple[dict, dict]:
    """Reconstruct ``volumes`` in fp32 and summarise. Returns ``(summary, per_volume)``;
    ``per_volume`` holds each measure ``(N,)``, ``recon (N, X, Y, Z)`` and ``codes``."""
    r = reconstruct_all(model, volumes.volumes, device, batch_size, keep=True, masks=volumes.masks)
    cfg, counts = model.cfg, r["counts"]
    p = counts / max(1, counts.sum())
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    summary = {
        "n_volumes": len(volumes),
        **metrics.summarise({k: r[k] for k in (*MEASURES, *MASKED)}),
        "codes_used": metrics.codes_used(counts),
        "codebook_size": cfg.quantizer.codebook_size,
        "perplexity": metrics.perplexity(counts),
        "dims": 3,
        "grid": list(cfg.grid_shape),
        "volume_shape": list(cfg.volume_shape),
        "voxel_mm": cfg.voxel_mm,
        "bits_per_image": cfg.bits_per_image,
        "bytes_per_image": cfg.bits_per_image / 8,
        "entropy_bits_per_image": entropy * math.prod(cfg.grid_shape),
        "preset": cfg.name,
    }
    return summary, r


def write_volume_report(
    out_dir: Path, volumes: VolumeSet, summary: dict, r: dict, json_path: Path | None = None
) -> None:
    """Write ``metrics.json``, ``per_volume.csv`` and ``reconstructions.png`` (three
    orthogonal views of original, reconstruction and difference for a few subjects)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in filter(None, [out_dir / "metrics.json", json_path]):
        write_json(path, summary)
    names = [*MEASURES, *MASKED]
    with (out_dir / "per_volume.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", *names])
        for i, src in enumerate(volumes.paths):
            w.writerow([src, *(f"{r[k][i]:.6f}" for k in names)])
    pick = np.unique(np.linspace(0, len(volumes) - 1, min(len(volumes), FIGURE_ROWS)).astype(int))
    orthogonal_views_figure(
        volumes.volumes[pick].astype(np.float32) / 255.0,
        r["recon"][pick],
        out_dir / "reconstructions.png",
        titles=[volumes.subjects[i] for i in pick],
        ssim_values=r["ssim"][pick],
    )


def reconstruct_volume_files(
    run: Run,
    source: Path,
    out: Path,
    json_path: Path | None = None,
    batch_size: int = 2,
    mask: Path | None = None,
) -> dict:
    """Reconstruct one volume file (NIfTI, Analyze) or every volume below a folder into
    ``out``: per volume ``<stem>_input.nii.gz`` (the scan as the model sees it: on the
    preset's grid, cropped, scaled), ``<stem>_recon.nii.gz`` (both with the affine that
    overlays the original scan), ``<stem>_recon.png`` and ``<stem>_codes.npy``, with the
    report of :func:`write_volume_report`. ``mask``: a brain mask of a single volume
    file, applied as the data reader applies masks. Returns the summary."""
    if mask is not None and not source.is_file():
        raise ConfigError(f"--mask {mask}: goes with one volume file, not the folder {source}")
    if mask is not None and not mask.is_file():
        raise DataError(mask, "no such mask file")
    files = [source] if source.is_file() else find_volumes(source)[0]
    if not files:
        raise DataError(source, "no NIfTI or Analyze volumes found")
    check_writable(out)
    opts = run.data_options
    prepared = [prepare_volume(path, mask, opts) for path in files]  # errors name the file
    volumes = VolumeSet(
        volumes=np.stack([v for v, _, _ in prepared]),
        masks=np.stack([m for _, m, _ in prepared]),
        affines=np.stack([a for _, _, a in prepared]),
        subjects=[volume_stem(p) or p.stem for p in files],
        ages=np.full(len(files), np.nan, np.float32),
        sexes=np.full(len(files), -1, np.int8),
        paths=[str(p) for p in files],
        voxel_mm=opts.voxel_mm,
    )
    summary, r = evaluate_volumes(run.vqvae, volumes, run.device, batch_size)
    summary["input"] = str(source)
    write_volume_report(out, volumes, summary, r, json_path)
    for i, stem in enumerate(volumes.subjects):
        affine = volumes.affines[i]
        write_nifti(out / f"{stem}_input.nii.gz", volumes.volumes[i], affine)
        write_nifti(out / f"{stem}_recon.nii.gz", r["recon"][i], affine)
        volume_views(r["recon"][i], out / f"{stem}_recon.png", title=f"{stem} reconstruction")
        atomic_write(out / f"{stem}_codes.npy", lambda t, c=r["codes"][i]: np.save(t.open("wb"), c))
    return summary
