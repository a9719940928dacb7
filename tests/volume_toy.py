"""Tiny synthetic brain volumes for the 3D tests: an IXI-like tree (t1/, seg/,
participants.csv) whose 'brains' change with age (a dark central blob, the ventricles,
grows) and sex (males are brighter), written at 2 mm in RAS order."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 28, 24)  # source volumes, 2 mm voxels
VOXEL = 2.0
# a 3D VQ-VAE small enough to train in seconds: 16^3 volumes -> 4^3 code grids
TINY3D = {
    "volume_shape": (16, 16, 16),
    "widths": (8, 16),
    "blocks": (0, 1),
    "decoder_blocks": (1, 1),
    "codebook_size": 16,
    "dim": 8,
}


def brain(age: float, sex: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(volume float32, labels uint8)`` of one subject, ``SHAPE``."""
    grid = np.stack(np.meshgrid(*(np.arange(n) - n / 2 + 0.5 for n in SHAPE), indexing="ij"))
    radii = np.array([7.0, 9.0, 7.0]) + rng.normal(0, 0.3, 3)
    r = np.sqrt(((grid / radii[:, None, None, None]) ** 2).sum(0))
    inside = r < 1
    vol = np.where(inside, 0.6 + 0.2 * (sex == "M") + 0.2 * (1 - r), 0.0)
    ventricles = r < 0.15 + 0.5 * (age - 20) / 70
    vol = np.where(ventricles, 0.15, vol) + rng.normal(0, 0.02, SHAPE) * inside
    return vol.astype(np.float32), inside.astype(np.uint8) * 4


def write_brains(
    root: Path, n_train: int = 12, n_validate: int = 4, n_test: int = 0, seed: int = 0
) -> list[dict]:
    """Write the tree under ``root``; returns the participants' rows."""
    rng = np.random.default_rng(seed)
    affine = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    affine[:3, 3] = [-(n - 1) * VOXEL / 2 for n in SHAPE]
    splits = ["train"] * n_train + ["validate"] * n_validate + ["test"] * n_test
    rows = []
    for i, split in enumerate(splits):
        subject = f"IXI{100 + i:03d}-HH-{2000 + i}"
        age, sex = float(rng.uniform(20, 90)), "FM"[i % 2]
        vol, labels = brain(age, sex, rng)
        for folder, data, suffix in (("t1", vol, "T1"), ("seg", labels, "T1_DLMUSE")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(data, affine)
            nib.save(img, str(root / folder / f"{subject}_{suffix}.nii.gz"))
        rows.append({"subject": subject, "age": round(age, 2), "sex": sex, "split": split})
    with open(root / "participants.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def make_volume_run(base: Path) -> Path:
    """Write tiny brains to ``base/data`` and train a 3D run on them in ``base/run`` (a
    few seconds): the tiny VQ-VAE and a transformer prior conditioned on age and sex."""
    from oasisvq.train.prior_run import train_prior
    from oasisvq.train.vqvae_run import train_vqvae

    write_brains(base / "data", n_train=12, n_validate=4, n_test=2)
    run = base / "run"
    train_vqvae(str(base / "data"), run, preset="compact3d", epochs=2, model_overrides=TINY3D)
    options = {"d_model": 32, "n_layers": 1, "n_heads": 2, "batch_size": 8}
    train_prior(run, prior="transformer", condition="age,sex", epochs=1, options=options)
    return run
