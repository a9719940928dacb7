"""Volume metrics in ``oasisvq.metrics`` (SSIM-3D, MS-SSIM-3D, masked PSNR/MSE) against
``pytorch_msssim``'s convolutions, the 2D definition and hand formulas."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F

from oasisvq import metrics as M

SEED = 4321


def _smooth_volume(shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0) -> torch.Tensor:
    """A smooth ``(1, 1, X, Y, Z)`` fp32 volume in [0, 1] (sum of low-frequency waves)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) / s for s in shape], indexing="ij")
    vol = np.zeros(shape)
    for _ in range(4):
        freq, phase = rng.uniform(0.5, 2.5, 3), rng.uniform(0, 6.3)
        vol += np.sin(2 * np.pi * sum(f * g for f, g in zip(freq, grids, strict=True)) + phase)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return torch.from_numpy(vol.astype(np.float32))[None, None]


def _noisy(x: torch.Tensor, sigma: float, seed: int = SEED) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def test_identical_volumes_give_one() -> None:
    x = _smooth_volume((20, 24, 28)).repeat(3, 1, 1, 1, 1).double()  # float64 is accepted
    for fn in (M.ssim3d, M.ms_ssim3d):
        out = fn(x, x)
        assert out.shape == (3,) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.ones(3), atol=1e-5, rtol=0)
    assert torch.all(M.psnr(x, x) == M.PSNR_MAX_DB) and torch.all(M.mse(x, x) == 0)


def test_ssim3d_matches_pytorch_msssim_conv3d() -> None:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand(3, 1, 24, 28, 20, generator=gen)
    y = (x + 0.3 * torch.rand(x.shape, generator=gen)).clamp(0, 1)
    ref = pytorch_msssim.ssim(
        x, y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5, K=M.SSIM_K
    )
    torch.testing.assert_close(M.ssim3d(x, y), ref, atol=1e-6, rtol=0)


def test_ssim3d_of_stacked_slices_is_close_to_2d_but_not_equal() -> None:
    # every z-slice holds the same 2D image; the noise differs per slice
    img = _smooth_volume((48, 48, 1))[..., 0]  # (1, 1, 48, 48)
    vol = img[..., None].expand(1, 1, 48, 48, 24).contiguous()
    noisy = _noisy(vol, 0.1)
    v3 = float(M.ssim3d(vol, noisy)[0])
    slices = noisy[0].permute(3, 0, 1, 2)  # (Z, 1, X, Y)
    v2 = float(M.ssim(img.expand_as(slices), slices).mean())
    assert abs(v3 - v2) < 0.02, (v3, v2)
    assert abs(v3 - v2) > 1e-4, "a 3D window must not reduce to the 2D one"


def test_ssim3d_and_ms_ssim3d_are_monotone_in_noise() -> None:
    x = _smooth_volume((32, 32, 32))
    levels = [0.01, 0.03, 0.1, 0.2, 0.4]
    ys = torch.cat([_noisy(x, s) for s in levels])
    xs = x.expand_as(ys)
    for fn in (M.ssim3d, M.ms_ssim3d):
        out = fn(xs, ys)
        assert torch.all(out[:-1] > out[1:]), (fn.__name__, out)
    assert torch.all(M.psnr(xs, ys)[:-1] > M.psnr(xs, ys)[1:])


@pytest.mark.parametrize(
    ("shape", "scales"),
    [((12, 40, 40), 1), ((13, 13, 13), 2), ((16, 16, 16), 2), ((32, 30, 28), 3), ((96,) * 3, 4)]
    + [((97, 120, 100), 5), ((256,) * 3, 5)],
)
def test_ms_ssim_scales_follow_the_window(shape: tuple[int, ...], scales: int) -> None:
    assert M.ms_ssim_scales(shape) == scales
    # the 2D rule (min side > 96) is the same count reaching five
    assert (M.ms_ssim_scales(shape[:2]) == 5) == (min(shape[:2]) > 96)


def _reference_ms_ssim(x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """MS-SSIM from ``pytorch_msssim``'s single-scale ``_ssim`` (conv3d) and avg_pool3d,
    with the first ``n`` standard weights rescaled to the standard total."""
    ssim_module = sys.modules["pytorch_msssim.ssim"]
    coords = torch.arange(7, dtype=torch.float32) - 3
    win = torch.exp(-(coords**2) / (2 * 1.5**2))
    win = (win / win.sum()).reshape(1, 1, 1, 1, 7)
    weights = torch.tensor(M.MS_SSIM_WEIGHTS[:n], dtype=torch.float64)
    weights = weights * sum(M.MS_SSIM_WEIGHTS) / weights.sum()
    out = torch.ones(x.shape[0], dtype=torch.float64)
    for i in range(n):
        s, cs = ssim_module._ssim(x, y, data_range=1.0, win=win, size_average=False, K=M.SSIM_K)
        term = (s if i == n - 1 else cs).relu().mean(1).double()
        out = out * term ** weights[i]
        pad = [d % 2 for d in x.shape[2:]]
        x, y = F.avg_pool3d(x, 2, padding=pad), F.avg_pool3d(y, 2, padding=pad)
    return out.float()


@pytest.mark.parametrize("shape", [(16, 16, 16), (33, 30, 28)])
def test_ms_ssim3d_matches_a_reference_composition(shape: tuple[int, int, int]) -> None:
    x = _smooth_volume(shape).repeat(3, 1, 1, 1, 1)
    y = torch.cat([_noisy(x[:1], s) for s in (0.05, 0.15, 0.4)])
    ref = _reference_ms_ssim(x, y, M.ms_ssim_scales(shape))
    torch.testing.assert_close(M.ms_ssim3d(x, y), ref, atol=1e-5, rtol=0)


def test_ms_ssim3d_no_nan_for_anticorrelated() -> None:
    x = _smooth_volume((20, 20, 20))
    out = M.ms_ssim3d(x, 1 - x)
    assert torch.isfinite(out).all() and 0 <= float(out[0]) <= 1


def test_masked_ssim3d_ignores_changes_beyond_the_mask_windows() -> None:
    x = _smooth_volume((32, 32, 32))
    y = _noisy(x, 0.1)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :12, :, :] = True  # window centres x < 12 reach x <= 16
    far = y.clone()
    far[..., 17:, :, :] = torch.rand(far[..., 17:, :, :].shape)
    assert torch.equal(M.ssim3d(x, far, mask), M.ssim3d(x, y, mask))
    assert not torch.isclose(M.ssim3d(x, far), M.ssim3d(x, y), atol=1e-3)
    border = y.clone()
    border[..., 16, :, :] = 1 - border[..., 16, :, :]  # inside the windows of the mask
    assert not torch.isclose(M.ssim3d(x, border, mask), M.ssim3d(x, y, mask), atol=1e-4)
    inside = y.clone()
    inside[..., 8, :, :] = 1 - inside[..., 8, :, :]
    assert float(M.ssim3d(x, inside, mask)[0]) < float(M.ssim3d(x, y, mask)[0]) - 1e-3


def test_masked_ssim3d_is_the_mean_over_window_centres() -> None:
    x = _smooth_volume((24, 26, 22)).repeat(2, 1, 1, 1, 1)
    y = torch.cat([_noisy(x[:1], 0.1), _noisy(x[:1], 0.3)])
    full = torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(M.ssim3d(x, y, full), M.ssim3d(x, y), atol=1e-6, rtol=0)
    # x < 12 holds valid centres 5..11 (7 slabs), x >= 12 holds 12..18 (7 slabs)
    low = torch.zeros_like(full)
    low[..., :12, :, :] = True
    a, b = M.ssim3d(x, y, low), M.ssim3d(x, y, ~low)
    torch.testing.assert_close((a + b) / 2, M.ssim3d(x, y), atol=1e-6, rtol=0)
    # an unbalanced split: x < 9 holds 4 slabs of the valid 14, x >= 9 the other 10
    low[..., 9:12, :, :] = False
    a, b = M.ssim3d(x, y, low), M.ssim3d(x, y, ~low)
    torch.testing.assert_close((4 * a + 10 * b) / 14, M.ssim3d(x, y), atol=1e-6, rtol=0)


def test_masked_mse_and_psnr_against_hand_formula() -> None:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand(3, 1, 8, 10, 12, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    mask = torch.rand(x.shape, generator=gen) > 0.6
    xn, yn, mn = x.numpy().astype(np.float64), y.numpy().astype(np.float64), mask.numpy()
    ref = np.array([((xn[i] - yn[i])[mn[i]] ** 2).mean() for i in range(3)])
    np.testing.assert_allclose(M.mse(x, y, mask).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(
        M.psnr(x, y, mask).numpy(), [10 * math.log10(1 / m) for m in ref], rtol=1e-5
    )
    unmasked = ((xn - yn) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(M.mse(x, y).numpy(), unmasked, rtol=1e-5)
    outside = torch.where(mask, y, 1 - y)  # changes outside the mask only
    torch.testing.assert_close(M.mse(x, outside, mask), M.mse(x, y, mask))
    assert M.psnr(x, y, mask).shape == (3,) and M.psnr(x, y).dtype == torch.float32
    # any number of spatial axes, a mask of the inputs' own shape
    x1, y1 = x.flatten(2), y.flatten(2)
    torch.testing.assert_close(M.mse(x1, y1, mask.flatten(2)), M.mse(x, y, mask))


def _message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_shapes_are_validated_with_one_line_errors() -> None:
    v = torch.rand(2, 1, 16, 16, 16)
    with pytest.raises(ValueError) as e:
        M.ssim3d(v[:, 0], v[:, 0])
    assert "(2, 16, 16, 16)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ssim3d(v, v[..., :15])
    assert "(2, 1, 16, 16, 15)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ssim3d(v[..., :10], v[..., :10])
    assert "(16, 16, 10)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ms_ssim3d(v[..., :12], v[..., :12])
    assert "(16, 16, 12)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ssim(v, v)  # the 2D SSIM refuses volumes
    assert "(2, 1, 16, 16, 16)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ssim3d(v, v, torch.ones(2, 1, 16, 16, dtype=torch.bool))
    assert "(2, 1, 16, 16)" in _message(e)
    with pytest.raises(ValueError) as e:
        M.ssim3d(v, v, torch.ones_like(v))
    assert "bool" in _message(e)
    corner = torch.zeros_like(v, dtype=torch.bool)
    corner[1, 0, :5] = True  # entry 1: only voxels whose windows overhang the volume
    corner[0] = True
    with pytest.raises(ValueError) as e:
        M.ssim3d(v, v, corner)
    assert "[1]" in _message(e)
    with pytest.raises(ValueError) as e:
        M.mse(v, v, torch.zeros_like(v, dtype=torch.bool))
    assert "[0, 1]" in _message(e)


def test_ssim3d_is_differentiable() -> None:
    x = _smooth_volume((16, 16, 16))
    xr = x.clone().requires_grad_()
    (1 - M.ssim3d(xr, _noisy(x, 0.1))).mean().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
