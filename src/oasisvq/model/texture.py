"""Scan texture: a Gaussian model of what the decoder leaves out, to draw from.

The decoder returns the mean of an image given its codes: a smooth image without the
noise and fine detail of a scan. Sampled that way, every sample is smoother than any real
scan, and smoothness alone raises its SSIM to whichever training scan lies nearest. The
texture is the residual ``real - reconstruction`` of the training split, modelled as a
stationary Gaussian field (its mean power spectrum) scaled voxel by voxel by the
residual's root mean square at the decoded intensity::

    x = mean + scale * rms(mean) * field,   field = irfft(amplitude * rfft(white noise))

``scale`` is fitted separately (:mod:`oasisvq.evaluate.texture`) so that textured
reconstructions lie as near the other training scans as real scans do.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BINS = 32  # decoded intensities in [0, 1] are binned this finely for the residual's std


@dataclass
class Texture:
    """shape: the image ``(S, S)`` or volume ``(X, Y, Z)`` shape it was fitted on; std:
    ``(BINS,)`` the residual's root mean square by decoded intensity, in [0, 1] units;
    amplitude: ``spectrum_shape(shape)``, the square root of the residual's mean power
    spectrum (its mean scaled to 1); scale: the factor applied when drawn."""

    shape: tuple[int, ...]
    std: Tensor
    amplitude: Tensor
    scale: float = 1.0

    def field(self, generator: torch.Generator) -> Tensor:
        """One unit-variance Gaussian field of ``shape`` with the residual's spectrum."""
        white = torch.randn(self.shape, generator=generator)
        field = torch.fft.irfftn(self.amplitude * torch.fft.rfftn(white), s=self.shape)
        return field / field.std().clamp_min(1e-12)

    def apply(self, images: Tensor, seed: int | None) -> Tensor:
        """Decoded ``(n, *shape)`` in [0, 1] -> the same with texture drawn from ``seed``
        (None: a fresh one), clipped to [0, 1]. Fields are drawn one image at a time in
        order, so the same seed gives the same texture to the same position."""
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(
                f"texture fitted on {self.shape}, images are {tuple(images.shape[1:])}"
            )
        generator = torch.Generator()
        generator.manual_seed(int(seed) if seed is not None else secrets.randbits(62))
        out = torch.empty_like(images, dtype=torch.float32)
        for i, mean in enumerate(images.float().cpu()):
            out[i] = (mean + self.scale * self.noise(mean, generator)).clamp(0, 1)
        return out.to(images.device)

    def noise(self, mean: Tensor, generator: torch.Generator) -> Tensor:
        """One draw at scale 1 for decoded ``mean`` ``(*shape)``: a field sized voxel by
        voxel by the residual's root mean square at the decoded intensity."""
        return self.std[bucket(mean)] * self.field(generator)


def spectrum_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``torch.fft.rfftn`` gives an image of ``shape``."""
    return (*shape[:-1], shape[-1] // 2 + 1)


def bucket(images: Tensor) -> Tensor:
    """Intensities in [0, 1] -> bin index in ``[0, BINS)``."""
    return (images * BINS).long().clamp(0, BINS - 1)


def fit_texture(real: np.ndarray | Tensor, reconstructed: np.ndarray | Tensor) -> Texture:
    """The texture of ``real - reconstructed``, both ``(N, *shape)`` uint8 (or float in
    [0, 1]), at scale 1. Bins that no voxel falls in get the std of their nearest filled
    bin."""
    sq = torch.zeros(BINS, dtype=torch.float64)
    count = torch.zeros(BINS, dtype=torch.float64)
    power = None
    for x, mean in zip(real, reconstructed, strict=True):
        x, mean = _unit(x), _unit(mean)
        residual, b = x - mean, bucket(mean)
        sq += torch.bincount(b.flatten(), residual.flatten().double() ** 2, BINS)
        count += torch.bincount(b.flatten(), minlength=BINS).double()
        p = torch.fft.rfftn(residual).abs().double() ** 2
        power = p if power is None else power + p
    if power is None:
        raise ValueError("no images to fit a texture on")
    filled = torch.nonzero(count > 0).flatten()  # at least one: every voxel falls in a bin
    nearest = (torch.arange(BINS)[:, None] - filled[None]).abs().argmin(1)
    std = (sq[filled] / count[filled]).sqrt()[nearest]
    amplitude = (power / len(real)).sqrt()
    return Texture(tuple(residual.shape), std.float(), (amplitude / amplitude.mean()).float())


def _unit(x: np.ndarray | Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
