"""Memorisation and diversity of sampled volumes (``oasisvq.evaluate.volume_samples``)
on tiny synthetic 16^3 volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oasisvq import metrics
from oasisvq.evaluate import volume_samples as V
from oasisvq.evaluate.reference import random_pairs
from oasisvq.evaluate.samples import FLAT_KEYS

SIDE = 16


def _blobs(n: int, seed: int) -> np.ndarray:
    """``(n, 16, 16, 16)`` uint8 volumes: a head-like ellipsoid with random bright and
    dark blobs, every volume different."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, SIDE)] * 3, indexing="ij"))
    head = ((grid**2).sum(0) < 0.75).astype(np.float32) * 0.5
    out = np.empty((n, SIDE, SIDE, SIDE), np.uint8)
    for i in range(n):
        vol = head.copy()
        for _ in range(4):
            c, r = rng.uniform(-0.5, 0.5, (3, 1, 1, 1)), rng.uniform(0.15, 0.35)
            vol += rng.uniform(-0.4, 0.5) * np.exp(-((grid - c) ** 2).sum(0) / (2 * r**2))
        out[i] = (np.clip(vol, 0, 1) * 255).astype(np.uint8)
    return out


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, SIDE), dtype=np.uint8)


def _small(volumes: np.ndarray) -> torch.Tensor:
    """Means over 4 x 4 x 4 blocks of 16^3 volumes, flattened: ``(n, 64)``."""
    v = torch.from_numpy(volumes).float().reshape(len(volumes), 4, 4, 4, 4, 4, 4)
    return v.mean((2, 4, 6)).flatten(1)


def _exhaustive(queries: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference of each query by SSIM-3D over all references."""
    q = torch.from_numpy(queries).float()[:, None] / 255
    r = torch.from_numpy(refs).float()[:, None] / 255
    scores = torch.stack([metrics.ssim3d(qi[None].expand_as(r), r) for qi in q])
    return scores.argmax(1).numpy(), scores.max(1).values.double().numpy()


def test_nearest_volumes_find_copies_and_match_an_exhaustive_search() -> None:
    train = _blobs(12, seed=1)
    held = _blobs(4, seed=2)
    idx, ssim = V.nearest_volumes(train[[7, 2]], train)
    assert idx.tolist() == [7, 2] and idx.dtype == np.int64
    np.testing.assert_allclose(ssim, 1.0, atol=1e-5)
    # with every training volume a candidate the prefilter changes nothing
    idx, ssim = V.nearest_volumes(held, train, candidates=len(train))
    ref_idx, ref_ssim = _exhaustive(held, train)
    assert idx.tolist() == ref_idx.tolist()
    np.testing.assert_allclose(ssim, ref_ssim, atol=1e-6)
    # with one candidate the neighbour is the L2-nearest at 4x downsampling
    idx1, ssim1 = V.nearest_volumes(held, train, candidates=1)
    l2 = torch.cdist(_small(held), _small(train)).argmin(1)
    assert idx1.tolist() == l2.tolist() and np.all(ssim1 <= ssim + 1e-9)


def test_copies_of_training_volumes_are_memorised_and_noise_is_not() -> None:
    train = _blobs(16, seed=3)
    held = _blobs(6, seed=4)
    copies = train[[0, 5, 9]]
    jittered = np.clip(train[[1, 2]].astype(int) + 1, 0, 255).astype(np.uint8)  # near copies
    samples = np.concatenate([copies, jittered, _noise(3, seed=5)])
    out, found = V.volume_memorisation(samples, train, held)
    assert set(out) == {
        "nn_ssim_mean",
        "nn_ssim_median",
        "nn_ssim_real_mean",
        "nn_ssim_real_p99",
        "memorised_share",
        "memorised_share_ci95",
        "memorised_share_of_real",
    }
    threshold = out["nn_ssim_real_p99"]
    assert 0 < threshold < 0.99
    assert np.all(found["ssim"][:5] > threshold)
    assert np.all(found["ssim"][5:] < threshold)
    assert found["idx"][:5].tolist() == [0, 5, 9, 1, 2]
    assert out["memorised_share"] == pytest.approx(5 / 8)
    low, high = out["memorised_share_ci95"]
    assert 0.3 < low < 5 / 8 < high < 0.9
    _, real = V.nearest_volumes(held, train)
    assert out["nn_ssim_real_mean"] == pytest.approx(real.mean())
    noise_only, _ = V.volume_memorisation(_noise(4, seed=6), train, held)
    assert noise_only["memorised_share"] == 0.0


def test_identical_samples_have_zero_diversity() -> None:
    vols = _blobs(5, seed=7)
    same = np.repeat(vols[:1], 4, axis=0)
    value, metric = V.mean_pairwise_volume_similarity(same)
    assert metric == "ms_ssim3d" and value == pytest.approx(1.0, abs=1e-5)
    distinct, _ = V.mean_pairwise_volume_similarity(vols)
    noise, _ = V.mean_pairwise_volume_similarity(_noise(4, seed=8))
    assert noise < distinct < 1.0 - 1e-3  # lower = more diverse, as in 2D
    assert math.isnan(V.mean_pairwise_volume_similarity(vols[:1])[0])


def test_pairs_are_bounded_and_seeded() -> None:
    vols = torch.from_numpy(_blobs(8, seed=9)).float() / 255  # float tensors work too
    all_pairs = V.mean_pairwise_volume_similarity(vols, n_pairs=1000)[0]
    i, j = np.triu_indices(8, 1)
    expected = metrics.ms_ssim3d(vols[i][:, None], vols[j][:, None]).double().mean()
    assert all_pairs == pytest.approx(float(expected), abs=1e-6)
    a = V.mean_pairwise_volume_similarity(vols, n_pairs=5, seed=1)[0]
    assert a == V.mean_pairwise_volume_similarity(vols, n_pairs=5, seed=1)[0]
    i, j = random_pairs(8, 5, 1)
    assert len(i) == 5 and np.all(i != j)
    expected = metrics.ms_ssim3d(vols[i][:, None], vols[j][:, None]).double().mean()
    assert a == pytest.approx(float(expected), abs=1e-6)


def test_evaluate_volume_samples_uses_the_2d_keys() -> None:
    train, held = _blobs(10, seed=10), _blobs(4, seed=11)
    samples = np.concatenate([train[:2], _noise(2, seed=12)])[:, None]  # (N, 1, X, Y, Z)
    recon = {"train": train, "held": held}  # a lossless autoencoder
    out = V.evaluate_volume_samples(samples, train, held, n_pairs=6, reconstructions=recon)
    assert set(out["diversity"]) == {"metric", "samples", "real", "real_reconstructions"}
    assert out["diversity"]["real_reconstructions"] == out["diversity"]["real"]
    mem = out["memorisation"]
    assert mem["memorised_share_recon_space"] == mem["memorised_share"]
    # the held-out volumes themselves: 1 of 4 lies above their own 99th percentile
    assert mem["memorised_share_of_real_reconstructions"] == pytest.approx(0.25)
    assert out["memorisation"]["memorised_share"] == pytest.approx(0.5)
    # each held-out volume against the 99th percentile of the other three: the one
    # nearest the training split always lies above it
    assert 0.25 <= mem["memorised_share_of_real"] < 1
    flat = {
        "nn_ssim_mean",
        "memorised_share",
        "memorised_share_of_real",
        "diversity_ms_ssim_samples",
        "diversity_ms_ssim_real",
    }
    assert set(V.VOLUME_FLAT_KEYS) == flat and flat <= set(FLAT_KEYS)
    for alias, (section, key) in V.VOLUME_FLAT_KEYS.items():
        assert out[alias] == out[section][key]
    assert out["setup"]["n_samples"] == 4 and out["setup"]["shape"] == [SIDE] * 3


def test_volume_shapes_are_validated() -> None:
    train = _blobs(3, seed=13)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        V.nearest_volumes(train[:, 0], train[:, 0])
    with pytest.raises(ValueError, match="differ in shape"):
        V.volume_memorisation(train[:, :15], train, train)
    with pytest.raises(ValueError, match="held-out"):
        V.volume_memorisation(train, train, train[:0])


def _blur(volumes: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(volumes).float()[:, None]
    return torch.nn.functional.avg_pool3d(x, 3, 1, 1, count_include_pad=False)[:, 0].numpy()


def test_copies_of_decoded_training_volumes_count_in_reconstruction_space() -> None:
    """A sample that decodes a training volume's codes is the training volume's
    reconstruction, not the volume: only the reconstruction-space search sees it as a copy."""
    train, held = _blobs(10, seed=13), _blobs(4, seed=14)
    recon = {"train": _blur(train) / 255, "held": _blur(held) / 255}
    samples = np.concatenate([recon["train"][:3], _noise(1, seed=15) / 255.0])
    mem, _ = V.volume_memorisation(samples, train, held, reconstructions=recon)
    assert mem["memorised_share_recon_space"] == pytest.approx(0.75)
    assert mem["nn_ssim_real_p99_recon_space"] < 1.0
    assert mem["nn_ssim_mean_recon_space"] > mem["nn_ssim_mean"]
