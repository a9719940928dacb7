"""Code grids of a split, encoded once by the run's VQ-VAE and cached.

``RUN/priors/codes_<split>.npz`` holds the codes ``(N, *grid)`` and the per-slice (or
per-volume) conditions (class, position, age, sex) of one split, with a fingerprint of the VQ-VAE
checkpoint and of the images; a cache whose fingerprint no longer matches (the VQ-VAE
was trained further, the data changed) is recomputed. Every prior of the run shares it.
Files are read with ``allow_pickle=False`` (numpy's default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.slices import SliceSet
from oasisvq.data.volumes3d import VolumeSet, split_arrays
from oasisvq.io import atomic_write
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.data import CodeSet, encode_images
from oasisvq.runs import checkpoint


def vqvae_fingerprint(run_dir: Path) -> str:
    """Names a run's latest VQ-VAE checkpoint, ``tag:bytes:mtime`` (what its decoder's
    cached reconstructions depend on; codes depend on :func:`codes_fingerprint`)."""
    ckpt = checkpoint.latest(Path(run_dir))
    if ckpt is None:
        return "none"
    st = (ckpt / "model.safetensors").stat()
    return f"{ckpt.name}:{st.st_size}:{st.st_mtime_ns}"


def codes_fingerprint(run_dir: Path) -> str:
    """Names the encoder and codebook that a run's codes come from: for a run whose decoder
    alone was trained further (``oasisvq finetune-decoder``) those of the run it started
    from, whose codes and priors it shares; else its own checkpoint."""
    ckpt = checkpoint.latest(Path(run_dir))
    if ckpt is None:
        return "none"
    shared = checkpoint.load_config(ckpt).get("finetune", {}).get("codes")
    return shared or vqvae_fingerprint(run_dir)


def _images_hash(images: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def _conditions(data: SliceSet | VolumeSet) -> dict[str, np.ndarray]:
    """The per-item conditions a split carries (volumes: no class, no slice position)."""
    n = len(data)
    if isinstance(data, VolumeSet):
        return {
            "classes": np.full(n, -1, np.int64),
            "positions": np.full(n, np.nan, np.float32),
            "ages": np.array(data.ages, np.float32),  # a copy: the cache is read-only
            "sexes": np.array(data.sexes, np.int64),
        }
    return {
        "classes": data.classes,
        "positions": data.positions,
        "ages": data.ages,
        "sexes": np.full(n, -1, np.int64),
    }


def cached_codes(
    run_dir: Path,
    split: str,
    data: SliceSet | VolumeSet,
    vqvae: Callable[[], VQVAE],
    device: torch.device,
    batch_size: int = 128,
) -> CodeSet:
    """The codes of ``data`` (slices or volumes of split ``split``) under the run's
    VQ-VAE, from ``RUN/priors/codes_<split>.npz`` when its fingerprint matches, else
    encoded and saved. ``vqvae`` loads the model, called only when encoding is needed."""
    path = Path(run_dir) / "priors" / f"codes_{split}.npz"
    images = split_arrays(data)
    key = json.dumps(
        {"vqvae": codes_fingerprint(run_dir), "images": _images_hash(images), "n": len(data)}
    )
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == key:
                sexes = z["sexes"] if "sexes" in z.files else None  # caches of 2D runs before sex
                return CodeSet(z["codes"], z["classes"], z["positions"], z["ages"], sexes)
    if isinstance(data, VolumeSet):
        batch_size = min(batch_size, 4)  # a volume is ~1M voxels
    codes = encode_images(vqvae(), images, device, batch_size)
    conditions = _conditions(data)
    arrays = {"codes": codes.astype(np.int16), **conditions, "fingerprint": np.array(key)}
    atomic_write(path, lambda tmp: np.savez(tmp.open("wb"), **arrays))
    return CodeSet(codes, **conditions)
