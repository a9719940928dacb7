"""Code grids of a split, encoded once by the run's VQ-VAE and cached.

``RUN/priors/codes_<split>.npz`` holds the codes ``(N, h, w)`` and the per-slice
conditions (class, position, age) of one split, with a fingerprint of the VQ-VAE
checkpoint and of the images; a cache whose fingerprint no longer matches (the VQ-VAE
was trained further, the data changed) is recomputed. Every prior of the run shares it.
Files are read with ``allow_pickle=False`` (numpy's default).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.slices import SliceSet
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
    shared = json.loads((ckpt / "config.json").read_text()).get("finetune", {}).get("codes")
    return shared or vqvae_fingerprint(run_dir)


def _images_hash(images: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def cached_codes(
    run_dir: Path,
    split: str,
    slices: SliceSet,
    vqvae: VQVAE,
    device: torch.device,
    batch_size: int = 128,
) -> CodeSet:
    """The codes of ``slices`` (split ``split``) under the run's VQ-VAE, from
    ``RUN/priors/codes_<split>.npz`` when its fingerprint matches, else encoded and saved."""
    path = Path(run_dir) / "priors" / f"codes_{split}.npz"
    key = json.dumps(
        {
            "vqvae": codes_fingerprint(run_dir),
            "images": _images_hash(slices.images),
            "n": len(slices),
        }
    )
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == key:
                return CodeSet(z["codes"], z["classes"], z["positions"], z["ages"])
    codes = encode_images(vqvae, slices.images, device, batch_size)
    arrays = {
        "codes": codes.astype(np.int16),
        "classes": slices.classes,
        "positions": slices.positions,
        "ages": slices.ages,
        "fingerprint": np.array(key),
    }
    atomic_write(path, lambda tmp: np.savez(tmp.open("wb"), **arrays))
    return CodeSet(codes, slices.classes, slices.positions, slices.ages)
