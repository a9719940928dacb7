"""Metrics in ``oasisvq.metrics`` against scikit-image and hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from oasisvq import metrics as M

RNG_SEED = 1234


def _smooth_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth ``(size, size)`` float64 image in [0, 1] (sum of low-frequency waves)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size))
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        img += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    img = (img - img.min()) / (img.max() - img.min())
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)
    return 0.6 * img + 0.4 * disc * img


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image SSIM with the project definition, mean over the cropped valid region."""
    mssim, smap = structural_similarity(
        x,
        y,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    pad = 5  # truncate=3.5, sigma=1.5 -> radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11 taps
    cropped = float(smap[pad:-pad, pad:-pad].mean())
    assert cropped == pytest.approx(mssim, abs=1e-12)
    return cropped


def _t(*arrays: np.ndarray) -> torch.Tensor:
    """Stack ``(H, W)`` arrays into a ``(B, 1, H, W)`` float32 tensor."""
    return torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32))


def test_ssim_matches_skimage_on_random_pairs() -> None:
    rng = np.random.default_rng(RNG_SEED)
    shape = (48, 57)
    xs, ys = [], []
    for noise in (0.05, 0.2, 0.5, 1.0):
        x = rng.random(shape)
        y = np.clip(x + noise * rng.standard_normal(shape), 0, 1)
        xs.append(x)
        ys.append(y)
    xs.append(rng.random(shape))  # an independent pair: SSIM near 0
    ys.append(rng.random(shape))
    ours = M.ssim(_t(*xs), _t(*ys))
    assert ours.shape == (len(xs),) and ours.dtype == torch.float32
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
        assert float(ours[i]) == pytest.approx(_skimage_ssim(x32, y32), abs=1e-5)


def test_ssim_matches_skimage_on_smooth_image_plus_noise() -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    x = _smooth_image(96).astype(np.float32).astype(np.float64)
    for noise in (0.01, 0.05, 0.15):
        y = np.clip(x + noise * rng.standard_normal(x.shape), 0, 1)
        y = y.astype(np.float32).astype(np.float64)
        ours = float(M.ssim(_t(x), _t(y))[0])
        assert ours == pytest.approx(_skimage_ssim(x, y), abs=1e-5)


def test_ssim_identical_is_one_and_accepts_float64() -> None:
    x = torch.from_numpy(_smooth_image(32))[None, None].repeat(3, 1, 1, 1)
    out = M.ssim(x, x)
    assert out.dtype == torch.float32 and out.shape == (3,)
    torch.testing.assert_close(out, torch.ones(3), atol=1e-5, rtol=0)


def test_ssim_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        M.ssim(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 17))
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 1, 10, 32), torch.rand(1, 1, 10, 32))


@pytest.mark.parametrize("size", [128, 256])
def test_ms_ssim_identical_and_monotone_in_noise(size: int) -> None:
    x = torch.from_numpy(_smooth_image(size).astype(np.float32))[None, None]
    assert float(M.ms_ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-5)
    gen = torch.Generator().manual_seed(RNG_SEED)
    noise = torch.randn(x.shape, generator=gen)
    levels = [0.01, 0.03, 0.1, 0.2, 0.4]
    ys = torch.cat([(x + s * noise).clamp(0, 1) for s in levels])
    out = M.ms_ssim(x.expand_as(ys), ys)
    assert out.shape == (len(levels),) and out.dtype == torch.float32
    assert torch.all(out[:-1] > out[1:]), out
    assert torch.all((out >= 0) & (out <= 1))


def test_ms_ssim_no_nan_for_anticorrelated_and_rejects_small() -> None:
    x = torch.from_numpy(_smooth_image(128).astype(np.float32))[None, None]
    out = M.ms_ssim(x, 1 - x)
    assert torch.isfinite(out).all() and float(out[0]) >= 0
    with pytest.raises(ValueError):
        M.ms_ssim(torch.rand(1, 1, 96, 96), torch.rand(1, 1, 96, 96))


def test_mse_and_psnr_against_hand_formula() -> None:
    gen = torch.Generator().manual_seed(RNG_SEED)
    x = torch.rand(4, 1, 20, 24, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    xn, yn = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    mse_ref = ((xn - yn) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(M.mse(x, y).numpy(), mse_ref, rtol=1e-5)
    psnr_ref = np.array([10 * math.log10(1.0 / m) for m in mse_ref])
    out = M.psnr(x, y)
    assert out.shape == (4,) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), psnr_ref, rtol=1e-5)


def test_psnr_identical_is_capped() -> None:
    x = torch.rand(2, 1, 8, 8)
    out = M.psnr(x, x)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.full((2,), M.PSNR_MAX_DB))


@pytest.mark.parametrize("k", [1, 7, 512])
def test_perplexity_uniform_is_k(k: int) -> None:
    assert M.perplexity(torch.full((k,), 13)) == pytest.approx(k, rel=1e-9)
    assert M.codes_used(np.full(k, 0.5)) == k


def test_perplexity_one_hot_is_one_and_codes_used() -> None:
    counts = np.zeros(64, dtype=np.int64)
    counts[17] = 1000
    assert M.perplexity(counts) == pytest.approx(1.0)
    assert M.codes_used(counts) == 1
    half = np.array([5, 5, 0, 0])
    assert M.perplexity(half) == pytest.approx(2.0)
    assert M.codes_used(torch.tensor(half)) == 2
    assert isinstance(M.perplexity(half), float) and isinstance(M.codes_used(half), int)


def test_perplexity_rejects_empty_and_negative() -> None:
    with pytest.raises(ValueError):
        M.perplexity(np.zeros(8))
    with pytest.raises(ValueError):
        M.perplexity(np.array([1, -1, 3]))


def test_summarise() -> None:
    out = M.summarise({"ssim": torch.tensor([0.5, 0.7, 0.9]), "psnr": np.array([30.0])})
    assert list(out) == ["ssim_mean", "ssim_std", "psnr_mean", "psnr_std"]
    assert out["ssim_mean"] == pytest.approx(0.7)
    assert out["ssim_std"] == pytest.approx(0.2)
    assert out["psnr_mean"] == 30.0 and out["psnr_std"] == 0.0
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError):
        M.summarise({"x": torch.tensor([])})


def test_ssim_is_differentiable_even_after_inference_mode() -> None:
    M._window.cache_clear()
    x = torch.rand(2, 1, 24, 24)
    with torch.inference_mode():  # the cached window must still serve autograd
        M.ssim(x, x)
        M.ms_ssim(torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128))
    xr = x.clone().requires_grad_()
    (1 - M.ssim(xr, (x + 0.1).clamp(0, 1))).mean().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_ssim_matches_pytorch_msssim_reference() -> None:
    import pytorch_msssim

    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, 1, 64, 80, generator=gen)
    y = (x + 0.2 * torch.rand(3, 1, 64, 80, generator=gen)).clamp(0, 1)
    ref = pytorch_msssim.ssim(
        x, y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5, K=(0.01, 0.03)
    )
    assert torch.allclose(M.ssim(x, y), ref, atol=1e-6)


def test_ms_ssim_matches_pytorch_msssim_reference() -> None:
    import pytorch_msssim

    gen = torch.Generator().manual_seed(11)
    x = torch.rand(3, 1, 128, 112, generator=gen)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # smooth: high MS-SSIM
    y = x + torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1) * torch.rand(x.shape, generator=gen)
    y = y.clamp(0, 1)
    ref = pytorch_msssim.ms_ssim(
        x, y, data_range=1.0, size_average=False, win_size=7, win_sigma=1.5, K=(0.01, 0.03)
    )
    assert torch.allclose(M.ms_ssim(x, y), ref, atol=1e-6, rtol=0)


def test_masked_ssim_2d_averages_inside_the_mask() -> None:
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(2, 1, 30, 30, generator=gen)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    left = torch.zeros_like(x, dtype=torch.bool)
    left[..., :15] = True  # valid centres 5..14 and 15..24: two equal halves
    halves = (M.ssim(x, y, left) + M.ssim(x, y, ~left)) / 2
    torch.testing.assert_close(halves, M.ssim(x, y), atol=1e-6, rtol=0)
