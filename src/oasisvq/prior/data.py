"""Code grids of a split, encoded once by the run's VQ-VAE and cached.

``RUN/priors/codes_<split>.npz`` holds the codes ``(N, h, w)`` and the per-slice
conditions (class, position, age) of one split, with a fingerprint of the VQ-VAE
checkpoint and of the images; a cache whose fingerprint no longer matches (the VQ-VAE
was trained further, the data changed) is recomputed. Every prior of the run shares it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from oasisvq.data.slices import SliceSet
from oasisvq.data.torch_dataset import to_unit
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import Cond
from oasisvq.train import checkpoint


@dataclass
class CodeSet:
    """Code grids with their conditions.

    codes: ``(N, h, w)`` int64; classes ``(N,)`` int64 (-1 unknown); positions and
    ages ``(N,)`` float32 (NaN unknown).
    """

    codes: np.ndarray
    classes: np.ndarray
    positions: np.ndarray
    ages: np.ndarray

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, np.int64)
        n = len(self.codes)
        self.classes = (
            np.full(n, -1, np.int64) if self.classes is None else np.asarray(self.classes, np.int64)
        )
        self.positions = (
            np.full(n, np.nan, np.float32)
            if self.positions is None
            else np.asarray(self.positions, np.float32)
        )
        self.ages = (
            np.full(n, np.nan, np.float32)
            if self.ages is None
            else np.asarray(self.ages, np.float32)
        )

    @classmethod
    def from_codes(cls, codes: np.ndarray, classes: np.ndarray | None = None) -> CodeSet:
        return cls(codes, classes, None, None)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.codes)

    def __add__(self, other: CodeSet) -> CodeSet:
        """The grids and conditions of ``self`` followed by those of ``other``."""
        return CodeSet(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )

    def cond(
        self, index: np.ndarray | slice = slice(None), device: torch.device | str = "cpu"
    ) -> Cond:
        return {
            "cls": torch.from_numpy(self.classes[index]).to(device),
            "pos": torch.from_numpy(self.positions[index]).to(device),
            "age": torch.from_numpy(self.ages[index]).to(device),
        }


class CodeDataset(Dataset):
    """Item i: ``{"codes": (h, w) int64, "cls": int64, "pos": float32, "age": float32}``."""

    def __init__(self, codes: CodeSet) -> None:
        self.data = codes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = self.data
        return {
            "codes": torch.from_numpy(d.codes[i]),
            "cls": torch.tensor(d.classes[i]),
            "pos": torch.tensor(d.positions[i]),
            "age": torch.tensor(d.ages[i]),
        }


@torch.no_grad()
def encode_images(
    vqvae: VQVAE, images: np.ndarray, device: torch.device, batch_size: int = 128
) -> np.ndarray:
    """``images (N, S, S) uint8`` -> codes ``(N, h, w)`` int64, in fp32."""
    was = vqvae.training
    vqvae.eval()
    out = []
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(images), batch_size):
            x = to_unit(
                torch.from_numpy(np.array(images[s : s + batch_size], np.uint8)).unsqueeze(1),
                device,
            )
            out.append(vqvae.encode(x).cpu())
    vqvae.train(was)
    return (
        torch.cat(out).numpy() if out else np.zeros((0, vqvae.cfg.grid, vqvae.cfg.grid), np.int64)
    )


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(
        tmp,
        codes=codes.astype(np.int16),
        classes=slices.classes,
        positions=slices.positions,
        ages=slices.ages,
        fingerprint=np.array(key),
    )
    os.replace(tmp, path)
    return CodeSet(codes, slices.classes, slices.positions, slices.ages)
