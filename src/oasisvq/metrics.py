"""Image-quality and codebook metrics, batched, in torch, computed in fp32.

Images are ``(B, C, H, W)`` float tensors in ``[0, 1]`` (the project uses
``C = 1``); every image metric returns one value per image, a ``(B,)`` fp32 tensor
(channels are averaged). Values are not clipped to ``[0, 1]`` first: pass what the
model produced. The functions stay differentiable; wrap calls in ``torch.no_grad()``
when only measuring.

SSIM, the project definition
----------------------------
Wang et al. (2004) with a Gaussian window of 11 taps and sigma 1.5 (weights
normalised to sum 1), ``K1 = 0.01``, ``K2 = 0.03``, data range 1
(``C1 = 0.01**2``, ``C2 = 0.03**2``), population (not sample) local variances, and
the SSIM map averaged over the *valid* region only: the window never overhangs
the image and there is no padding, so an ``H x W`` image gives an
``(H - 10) x (W - 10)`` map. This is the definition of ``tf.image.ssim`` and of
scikit-image ``structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)`` (whose truncate-3.5 Gaussian has
radius 5, i.e. 11 taps, and which averages over ``crop(S, 5)``). It is computed by
``pytorch_msssim.ssim(..., K=(0.01, 0.03), nonnegative_ssim=False)`` given that
11-tap window (built here once per device, identical to its ``win_size=11,
win_sigma=1.5`` window); it uses exactly that valid separable convolution. The
tests check the agreement with scikit-image. SSIM lies in ``[-1, 1]``;
negative values are kept. Images need ``H, W >= 11``.

MS-SSIM
-------
Wang et al. (2003), five scales with the standard weights
``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, 2x2 average pooling between scales,
and the same constants as SSIM but a **7-tap** Gaussian window (sigma 1.5): at
128 x 128 the fifth scale is 8 x 8, too small for 11 taps. Images need
``min(H, W) > 96`` (128 and 256 both work). As in ``pytorch_msssim.ms_ssim``, the
contrast-structure terms and the last-scale SSIM are clamped at 0 before the
fractional powers, so strongly anti-correlated inputs give 0 instead of NaN.
The result lies in ``[0, 1]``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_msssim
import torch
from torch import Tensor

SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
MS_SSIM_WIN_SIZE = 7
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_MAX_DB = 100.0

__all__ = [
    "ssim",
    "ms_ssim",
    "psnr",
    "mse",
    "perplexity",
    "codes_used",
    "summarise",
    "PSNR_MAX_DB",
]


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check two ``(B, C, H, W)`` batches of equal shape; return them as fp32."""
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")
    return x.float(), y.float()


@functools.lru_cache(maxsize=32)
def _window(size: int, channels: int, device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian (sigma ``SSIM_SIGMA``) as a ``(C, 1, 1, size)`` fp32
    depthwise kernel, as ``pytorch_msssim`` builds it, cached per device so that no
    host-to-device copy happens per call. Built outside inference mode so it can
    serve autograd later (SSIM is also a training loss)."""
    with torch.inference_mode(False), torch.no_grad():
        coords = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
        g = (g / g.sum()).reshape(1, 1, 1, size).repeat(channels, 1, 1, 1)
        return g.to(device)


@functools.lru_cache(maxsize=32)
def _band(n: int, device: torch.device) -> Tensor:
    """``(n, n - 10)`` fp32 matrix whose column j holds the 11-tap Gaussian at rows
    j..j+10: ``maps @ band`` is the valid 1-D Gaussian filter along the last axis."""
    with torch.inference_mode(False), torch.no_grad():
        g = _window(SSIM_WIN_SIZE, 1, torch.device("cpu")).flatten()
        band = torch.zeros(n, n - SSIM_WIN_SIZE + 1)
        for j in range(band.shape[1]):
            band[j : j + SSIM_WIN_SIZE, j] = g
        return band.to(device)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """SSIM per image (project definition, see module docstring).

    x, y: ``(B, C, H, W)`` in ``[0, 1]`` with ``H, W >= 11``. Returns ``(B,)`` fp32
    in ``[-1, 1]``; identical images give 1.

    The separable valid Gaussian filter runs as two matrix products with banded
    matrices (several times faster on CPU than depthwise convolutions, and the same
    numbers as ``pytorch_msssim.ssim`` to float precision: the tests check both).
    """
    x, y = _pair(x, y)
    if min(x.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f"SSIM needs H, W >= {SSIM_WIN_SIZE}, got {tuple(x.shape[-2:])}")
    h, w = x.shape[-2:]
    maps = torch.stack([x, y, x * x, y * y, x * y], 1)  # (B, 5, C, H, W)
    maps = _band(h, x.device).t() @ (maps @ _band(w, x.device))  # (B, 5, C, H-10, W-10)
    mx, my, xx, yy, xy = maps.unbind(1)
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    var_x, var_y, cov = xx - mx * mx, yy - my * my, xy - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Five-scale MS-SSIM per image with a 7-tap window (see module docstring).

    x, y: ``(B, C, H, W)`` in ``[0, 1]`` with ``min(H, W) > 96``. Returns ``(B,)``
    fp32 in ``[0, 1]``; identical images give 1.
    """
    x, y = _pair(x, y)
    smallest = (MS_SSIM_WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
    if min(x.shape[-2:]) <= smallest:
        raise ValueError(f"MS-SSIM needs H, W > {smallest}, got {tuple(x.shape[-2:])}")
    return pytorch_msssim.ms_ssim(
        x,
        y,
        data_range=1.0,
        size_average=False,
        win=_window(MS_SSIM_WIN_SIZE, x.shape[1], x.device),
        weights=list(MS_SSIM_WEIGHTS),
        K=SSIM_K,
    )


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image. x, y: ``(B, C, H, W)``. Returns ``(B,)`` fp32."""
    x, y = _pair(x, y)
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB per image for data range 1: ``10 * log10(1 / mse)``.

    x, y: ``(B, C, H, W)`` in ``[0, 1]``. Returns ``(B,)`` fp32. The MSE is floored
    at ``1e-10`` so identical (or nearly identical) images give exactly
    ``PSNR_MAX_DB = 100`` dB instead of infinity.
    """
    floor = 10.0 ** (-PSNR_MAX_DB / 10.0)
    return 10.0 * torch.log10(1.0 / mse(x, y).clamp_min(floor))


def _histogram(counts: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Code-usage counts as a flat float64 array; rejects negative entries."""
    if isinstance(counts, Tensor):
        counts = counts.detach().cpu().numpy()
    hist = np.asarray(counts, dtype=np.float64).ravel()
    if (hist < 0).any() or not np.isfinite(hist).all():
        raise ValueError("code counts must be finite and non-negative")
    return hist


def perplexity(counts: Tensor | np.ndarray | Sequence[float]) -> float:
    """Codebook perplexity ``exp(H(p))`` of the code-usage histogram.

    counts: ``(K,)`` non-negative counts (or frequencies) per code; any shape is
    flattened. Returns a float in ``[1, K]``: ``K`` for uniform use, 1 when a
    single code is used. Raises ``ValueError`` when all counts are zero.
    """
    hist = _histogram(counts)
    total = hist.sum()
    if total <= 0:
        raise ValueError("perplexity of an empty histogram (all counts are zero)")
    p = hist[hist > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def codes_used(counts: Tensor | np.ndarray | Sequence[float]) -> int:
    """Number of codes with a non-zero count. counts: ``(K,)`` (any shape, flattened)."""
    return int((_histogram(counts) > 0).sum())


def summarise(values: Mapping[str, Tensor | np.ndarray | Sequence[float]]) -> dict[str, float]:
    """Mean and standard deviation of each per-image metric.

    values: ``{name: (N,) values}``. Returns ``{"<name>_mean": ..., "<name>_std": ...}``
    for every name, in input order. The std is the sample std (``N - 1``
    denominator), 0.0 when ``N == 1``. Raises ``ValueError`` for an empty array.
    """
    out: dict[str, float] = {}
    for name, vals in values.items():
        v = torch.as_tensor(np.asarray(vals) if not isinstance(vals, Tensor) else vals)
        v = v.detach().double().flatten().cpu()
        if v.numel() == 0:
            raise ValueError(f"no values to summarise for {name!r}")
        out[f"{name}_mean"] = float(v.mean())
        out[f"{name}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    return out
