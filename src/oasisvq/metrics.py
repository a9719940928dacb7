"""Image- and volume-quality and codebook metrics, batched, in torch, computed in fp32.

Images are ``(B, C, H, W)`` and volumes ``(B, C, X, Y, Z)`` float tensors in
``[0, 1]`` (the project uses ``C = 1``); every image or volume metric returns one
value per item, a ``(B,)`` fp32 tensor (channels are averaged). Values are not
clipped to ``[0, 1]`` first: pass what the model produced. The functions stay
differentiable; wrap calls in ``torch.no_grad()`` when only measuring.

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
radius 5, i.e. 11 taps, and which averages over ``crop(S, 5)``), and of
``pytorch_msssim.ssim(..., K=(0.01, 0.03), nonnegative_ssim=False)`` given that
11-tap window. The tests check the agreement with both. SSIM lies in ``[-1, 1]``;
negative values are kept. Images need ``H, W >= 11``.

:func:`ssim3d` is the same definition for volumes: the separable 11 x 11 x 11
Gaussian window (the product of the same 1-D window along x, y and z), so an
``X x Y x Z`` volume gives an ``(X - 10) x (Y - 10) x (Z - 10)`` map; every side
needs ``>= 11``. With a mask the map is still computed on the whole volume and
averaged over the voxels whose window *centre* lies inside the mask (a change
outside the mask but within 5 voxels of it therefore still counts, through the
windows that straddle the border).

The valid separable Gaussian filter has two implementations for any number of
spatial axes. SSIM (also a training loss) uses banded matrix products along each
axis (:func:`_band_filter`): faster on CPU than depthwise convolutions (measured on
one core: 0.9 s against 2.0 s for ``conv3d`` on five 128^3 volumes of five maps)
and the same numbers as ``pytorch_msssim`` to float precision (tested). MS-SSIM uses
depthwise ``conv2d``/``conv3d`` passes (:func:`_conv_filter`), ``pytorch_msssim``'s
own operations: at its coarse scales the local variances are small differences of
large terms, so a different summation order moves the result by up to ~1e-5, and
the convolutions keep it equal to ``pytorch_msssim.ms_ssim`` instead.

MS-SSIM
-------
Wang et al. (2003), five scales with the standard weights
``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, 2x2 average pooling between scales
(an odd side is zero-padded by one first, so it becomes ``ceil(side / 2)``, as in
``pytorch_msssim``), and the same constants as SSIM but a **7-tap** Gaussian window
(sigma 1.5): at 128 x 128 the fifth scale is 8 x 8, too small for 11 taps. A scale
*fits* when its smallest side still holds the window (``>= 7``); :func:`ms_ssim`
needs all five to fit, i.e. ``min(H, W) > 96`` (128 and 256 both work). As in
``pytorch_msssim.ms_ssim``, the contrast-structure terms of the finer scales and
the full SSIM of the coarsest scale are clamped at 0 before the fractional powers,
so strongly anti-correlated inputs give 0 instead of NaN. The result lies in
``[0, 1]``.

:func:`ms_ssim3d` applies the same scheme to volumes (2x2x2 pooling) with as many
scales as fit, at most five and at least two (every side ``>= 13``): with ``S``
scales it uses the first ``S`` standard weights (the finest scales; the coarsest
scale used takes the full SSIM), rescaled to the total of the five standard
weights, so a volume that fits all five scales gets exactly the 2D scheme and
identical volumes always give 1. Values at different numbers of scales are not
comparable: compare volumes of one shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
MS_SSIM_WIN_SIZE = 7
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_MAX_DB = 100.0

__all__ = [
    "ssim",
    "ssim3d",
    "ms_ssim",
    "ms_ssim3d",
    "ms_ssim_scales",
    "psnr",
    "mse",
    "perplexity",
    "codes_used",
    "summarise",
    "PSNR_MAX_DB",
]

Filter = Callable[[Tensor, int, int], Tensor]  # (maps, taps, spatial axes) -> filtered maps
_LAYOUT = {2: "(B, C, H, W) images", 3: "(B, C, X, Y, Z) volumes"}
_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {2: F.conv2d, 3: F.conv3d}


# --------------------------------------------------------------------------- helpers


def _pair(x: Tensor, y: Tensor, dims: int | None) -> tuple[Tensor, Tensor]:
    """Check two ``(B, C, *spatial)`` batches of equal shape with ``dims`` spatial axes
    (``None``: any number, at least one); return them as fp32."""
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if dims is not None and x.ndim != dims + 2:
        raise ValueError(f"expected {_LAYOUT[dims]}, got shape {tuple(x.shape)}")
    if x.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) inputs, got shape {tuple(x.shape)}")
    return x.float(), y.float()


def _check_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """Check a bool ``(B, 1, *spatial)`` (or ``x``-shaped) mask against ``x (B, C, *spatial)``."""
    if mask is None:
        return None
    ok = (x.shape[0], 1, *x.shape[2:])
    if tuple(mask.shape) not in (ok, tuple(x.shape)):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit inputs {tuple(x.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    return mask.to(x.device)


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean per item of ``values (B, C, *S)`` over all entries, or over those where the
    bool ``mask (B, 1 or C, *S)`` is True. Raises ``ValueError`` for an empty mask."""
    if mask is None:
        return values.flatten(1).mean(1)
    mask = mask.expand_as(values)
    count = mask.flatten(1).sum(1)
    if (count == 0).any():
        empty = torch.nonzero(count == 0).flatten().tolist()
        raise ValueError(f"mask selects no voxel for batch entries {empty}")
    return torch.where(mask, values, 0.0).flatten(1).sum(1) / count


def _crop(mask: Tensor | None, radius: int) -> Tensor | None:
    """The mask at the centres of the valid windows: ``radius`` cut from every side."""
    if mask is None:
        return None
    return mask[(..., *(slice(radius, s - radius) for s in mask.shape[2:]))]


@functools.lru_cache(maxsize=32)
def _window(size: int) -> Tensor:
    """The normalised 1-D Gaussian (sigma ``SSIM_SIGMA``) of ``size`` taps, fp32 on the
    CPU, as ``pytorch_msssim`` builds it. Built outside inference mode so what is made
    from it can serve autograd later (SSIM is also a training loss)."""
    with torch.inference_mode(False), torch.no_grad():
        coords = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
        return g / g.sum()


@functools.lru_cache(maxsize=64)
def _band(n: int, size: int, device: torch.device) -> Tensor:
    """``(n, n - size + 1)`` fp32 matrix whose column j holds the ``size``-tap Gaussian at
    rows ``j .. j + size - 1``: ``t @ band`` is the valid 1-D Gaussian filter along the
    last axis. Cached per device so no host-to-device copy happens per call."""
    with torch.inference_mode(False), torch.no_grad():
        g = _window(size)
        band = torch.zeros(n, n - size + 1)
        for j in range(band.shape[1]):
            band[j : j + size, j] = g
        return band.to(device)


def _band_filter(t: Tensor, size: int, dims: int) -> Tensor:
    """The valid separable Gaussian filter of ``size`` taps over the last ``dims`` axes of
    ``t`` (each shrinks by ``size - 1``) as banded matrix products."""
    for axis in range(-1, -dims - 1, -1):  # last axis first, as the 2D SSIM always did
        band = _band(t.shape[axis], size, t.device)
        t = t @ band if axis == -1 else (t.movedim(axis, -1) @ band).movedim(-1, axis)
    return t


def _conv_filter(t: Tensor, size: int, dims: int) -> Tensor:
    """The same filter as :func:`_band_filter` as depthwise ``conv2d``/``conv3d`` passes,
    one per axis, first axis first: ``pytorch_msssim``'s operations, so its numbers."""
    lead = t.shape[: t.ndim - dims]
    t = t.reshape(lead[0], -1, *t.shape[t.ndim - dims :])  # (B, K, *S): one group per map
    k = t.shape[1]
    win = _window(size).to(t.device).reshape(1, 1, *[1] * (dims - 1), size)
    win = win.repeat(k, *[1] * (dims + 1))
    for i in range(dims):
        t = _CONV[dims](t, win.transpose(2 + i, -1), groups=k)
    return t.reshape(*lead, *t.shape[2:])


def _check_sides(x: Tensor, size: int, what: str) -> None:
    if min(x.shape[2:]) < size:
        raise ValueError(f"{what} needs every side >= {size}, got {tuple(x.shape[2:])}")


def _stats(x: Tensor, y: Tensor, size: int, filt: Filter) -> tuple[Tensor, ...]:
    """Local means, variances and covariance of ``x, y (B, C, *S)`` under the valid
    ``size``-tap Gaussian window applied by ``filt``: five ``(B, C, *(S - size + 1))``
    maps."""
    maps = torch.stack([x, y, x * x, y * y, x * y], 1)  # (B, 5, C, *S)
    mx, my, xx, yy, xy = filt(maps, size, x.ndim - 2).unbind(1)
    return mx, my, xx - mx * mx, yy - my * my, xy - mx * my


def _ssim_map(mx: Tensor, my: Tensor, var_x: Tensor, var_y: Tensor, cov: Tensor) -> Tensor:
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))


def _cs_map(var_x: Tensor, var_y: Tensor, cov: Tensor) -> Tensor:
    """The contrast-structure term of SSIM (no luminance)."""
    c2 = SSIM_K[1] ** 2
    return (2 * cov + c2) / (var_x + var_y + c2)


def _ssim(x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """SSIM of checked fp32 ``(B, C, *S)`` inputs, averaged inside ``mask`` if given."""
    mask = _check_mask(mask, x)
    _check_sides(x, SSIM_WIN_SIZE, "SSIM")
    s = _ssim_map(*_stats(x, y, SSIM_WIN_SIZE, _band_filter))
    return _masked_mean(s, _crop(mask, SSIM_WIN_SIZE // 2))


def _halve(t: Tensor) -> Tensor:
    """2x average pooling over every spatial axis; an odd side is zero-padded by one."""
    return _POOL[t.ndim - 2](t, kernel_size=2, padding=[s % 2 for s in t.shape[2:]])


def _ms_ssim(x: Tensor, y: Tensor, weights: Sequence[float]) -> Tensor:
    """MS-SSIM of checked fp32 ``(B, C, *S)`` inputs with one weight per scale."""
    terms = []
    for i in range(len(weights)):
        mx, my, var_x, var_y, cov = _stats(x, y, MS_SSIM_WIN_SIZE, _conv_filter)
        if i < len(weights) - 1:
            terms.append(_cs_map(var_x, var_y, cov).flatten(2).mean(-1).relu())  # (B, C)
            x, y = _halve(x), _halve(y)
        else:
            terms.append(_ssim_map(mx, my, var_x, var_y, cov).flatten(2).mean(-1).relu())
    w = torch.tensor(weights, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** w, dim=0).mean(1)


def ms_ssim_scales(shape: Sequence[int]) -> int:
    """Number of MS-SSIM scales (at most five) whose smallest side still holds the 7-tap
    window, for a spatial ``shape`` such as ``(H, W)`` or ``(X, Y, Z)``: sides shrink to
    ``ceil(side / 2)`` per scale. :func:`ms_ssim` needs 5, :func:`ms_ssim3d` uses them."""
    sides, n = list(shape), 0
    while n < len(MS_SSIM_WEIGHTS) and min(sides) >= MS_SSIM_WIN_SIZE:
        n += 1
        sides = [-(-s // 2) for s in sides]
    return n


def _scale_weights(n: int) -> tuple[float, ...]:
    """The first ``n`` standard weights rescaled to the total of all five."""
    head = MS_SSIM_WEIGHTS[:n]
    return tuple(w * sum(MS_SSIM_WEIGHTS) / sum(head) for w in head)


# --------------------------------------------------------------------------- metrics


def ssim(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """SSIM per image (project definition, see module docstring).

    x, y: ``(B, C, H, W)`` in ``[0, 1]`` with ``H, W >= 11``. mask: optional bool
    ``(B, 1, H, W)``: the SSIM map is averaged over the pixels inside it only (see
    :func:`ssim3d`). Returns ``(B,)`` fp32 in ``[-1, 1]``; identical images give 1.
    """
    x, y = _pair(x, y, 2)
    return _ssim(x, y, mask)


def ssim3d(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """SSIM per volume with the 11 x 11 x 11 Gaussian window (see module docstring).

    x, y: ``(B, C, X, Y, Z)`` in ``[0, 1]`` with every side ``>= 11``. mask: optional
    bool ``(B, 1, X, Y, Z)`` (or the shape of ``x``): the map, computed on the whole
    volume, is averaged over the voxels inside the mask (window centres), which must
    hold at least one voxel at least 5 from every face. Returns ``(B,)`` fp32 in
    ``[-1, 1]``; identical volumes give 1.
    """
    x, y = _pair(x, y, 3)
    return _ssim(x, y, mask)


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Five-scale MS-SSIM per image with a 7-tap window (see module docstring).

    x, y: ``(B, C, H, W)`` in ``[0, 1]`` with ``min(H, W) > 96``. Returns ``(B,)``
    fp32 in ``[0, 1]``; identical images give 1.
    """
    x, y = _pair(x, y, 2)
    if ms_ssim_scales(x.shape[2:]) < len(MS_SSIM_WEIGHTS):
        smallest = (MS_SSIM_WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
        raise ValueError(f"MS-SSIM needs H, W > {smallest}, got {tuple(x.shape[-2:])}")
    return _ms_ssim(x, y, MS_SSIM_WEIGHTS)


def ms_ssim3d(x: Tensor, y: Tensor) -> Tensor:
    """MS-SSIM per volume with as many scales as fit, 2 to 5 (see module docstring).

    x, y: ``(B, C, X, Y, Z)`` in ``[0, 1]`` with every side ``>= 13``; the number of
    scales is :func:`ms_ssim_scales` of ``(X, Y, Z)`` (5 from side 97 up). Returns
    ``(B,)`` fp32 in ``[0, 1]``; identical volumes give 1.
    """
    x, y = _pair(x, y, 3)
    n = ms_ssim_scales(x.shape[2:])
    if n < 2:
        raise ValueError(
            f"MS-SSIM-3D needs every side >= 13 (two scales), got {tuple(x.shape[2:])}"
        )
    return _ms_ssim(x, y, _scale_weights(n))


def mse(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error per item. x, y: ``(B, C, *spatial)`` (images, volumes, ...);
    mask: optional bool ``(B, 1, *spatial)`` (or the shape of ``x``): the mean over the
    entries inside it only. Returns ``(B,)`` fp32."""
    x, y = _pair(x, y, None)
    return _masked_mean((x - y).pow(2), _check_mask(mask, x))


def psnr(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB per item for data range 1: ``10 * log10(1 / mse)``.

    x, y: ``(B, C, *spatial)`` in ``[0, 1]``; mask as for :func:`mse`. Returns ``(B,)``
    fp32. The MSE is floored at ``1e-10`` so identical (or nearly identical) inputs
    give exactly ``PSNR_MAX_DB = 100`` dB instead of infinity.
    """
    floor = 10.0 ** (-PSNR_MAX_DB / 10.0)
    return 10.0 * torch.log10(1.0 / mse(x, y, mask).clamp_min(floor))


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
