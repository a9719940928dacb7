"""The Python API: ``model = oasisvq.load(RUN_DIR)``.

Images are ``(N, S, S)`` or ``(N, 1, S, S)`` float arrays/tensors in ``[0, 1]`` (uint8
``0..255`` is accepted too); codes are ``(N, h, w)`` int64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from oasisvq.errors import ConfigError
from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.vqvae import VQVAE
from oasisvq.train import checkpoint

ArrayLike = Tensor | np.ndarray


def _as_batch(images: ArrayLike, device: torch.device) -> Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"images of shape {tuple(x.shape)}: expected (N, S, S) or (N, 1, S, S)")
    return x.to(device)


class VQModel:
    """A trained VQ-VAE (and its prior, when one was trained in the same run)."""

    def __init__(
        self, vqvae: VQVAE, run_dir: Path | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.vqvae = vqvae.to(self.device).eval()
        self.config: VQVAEConfig = vqvae.cfg
        self.run_dir = run_dir

    @property
    def grid(self) -> int:
        return self.config.grid

    @torch.no_grad()
    def encode(self, images: ArrayLike) -> Tensor:
        """Images ``(N, S, S)`` in [0, 1] -> codes ``(N, h, w)`` int64."""
        return self.vqvae.encode(_as_batch(images, self.device))

    @torch.no_grad()
    def decode(self, codes: ArrayLike) -> Tensor:
        """Codes ``(N, h, w)`` -> images ``(N, S, S)`` float32 in [0, 1]."""
        codes = torch.as_tensor(
            np.asarray(codes) if not isinstance(codes, Tensor) else codes
        ).long()
        k = self.config.quantizer.codebook_size
        if codes.numel() and (codes.min() < 0 or codes.max() >= k):
            raise ValueError(f"codes must lie in [0, {k})")
        return self.vqvae.decode(codes.to(self.device))[:, 0]

    @torch.no_grad()
    def reconstruct(self, images: ArrayLike) -> Tensor:
        """Images ``(N, S, S)`` -> reconstructions through the quantizer, ``(N, S, S)`` in [0, 1]."""
        return self.decode(self.encode(images))

    def sample(self, n: int, **kwargs: object) -> Tensor:
        """``n`` new images ``(n, S, S)`` from the run's prior (see ``oasisvq.sample``)."""
        from oasisvq.sample.sampler import sample_images

        if self.run_dir is None:
            raise ConfigError("this model has no run directory, so no prior to sample from")
        return sample_images(self, n, **kwargs)[0]


def load_vqvae(run_dir: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    run_dir = Path(run_dir)
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise ConfigError(f"{run_dir}: no checkpoint found (expected checkpoints/LATEST)")
    saved = checkpoint.read_config(run_dir)
    if saved.get("kind") != "vqvae":
        raise ConfigError(f"{run_dir}: not a VQ-VAE run (kind={saved.get('kind')!r})")
    model = VQVAE(VQVAEConfig.from_dict(saved["model"]))
    checkpoint.load_weights(ckpt, model)
    return model.to(device).eval()


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> VQModel:
    """Load a trained run for inference."""
    return VQModel(load_vqvae(run_dir, device), Path(run_dir), device)
