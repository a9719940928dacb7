"""The sample measures: Frechet distance, nearest neighbours, pairwise similarity, feature network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from oasisvq.data.slices import SliceSet
from oasisvq.evaluate.features import (
    FeatureNet,
    exclusive,
    extract,
    feature_net,
    frechet_distance,
    rotate_batch,
)
from oasisvq.evaluate.samples import mean_pairwise_similarity, nearest_neighbours, real_reference


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))
    b = rng.standard_normal((300, 12)) * 2 + 0.5
    assert frechet_distance(a, b) == pytest.approx(_scipy_fd(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.full(12, 0.5)
    assert frechet_distance(a, a + shift) == pytest.approx(12 * 0.25, rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :5])


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size))
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.5, 4, 3)
            img += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        out.append((img - img.min()) / (img.max() - img.min()))
    return (np.stack(out) * 255).astype(np.uint8)


def test_nearest_neighbours_finds_noisy_copies() -> None:
    refs = _images(60)
    perm = np.random.default_rng(1).permutation(60)[:20]
    noise = np.random.default_rng(2).normal(0, 0.03, (20, 64, 64))
    queries = np.clip(refs[perm] / 255.0 + noise, 0, 1).astype(np.float32)
    idx, ssim = nearest_neighbours(queries, refs, candidates=5)
    assert np.array_equal(idx, perm)
    assert (ssim > 0.5).all() and (ssim <= 1).all()
    exhaustive_idx, exhaustive_ssim = nearest_neighbours(queries, refs, candidates=60)
    assert np.array_equal(exhaustive_idx, idx)
    np.testing.assert_allclose(exhaustive_ssim, ssim, rtol=1e-6)
    self_idx, self_ssim = nearest_neighbours(refs[:5], refs)
    assert np.array_equal(self_idx, np.arange(5)) and np.allclose(self_ssim, 1.0, atol=1e-5)


def test_mean_pairwise_similarity() -> None:
    same = np.repeat(_images(1, 128), 6, axis=0)
    value, name = mean_pairwise_similarity(same)
    assert name == "ms_ssim" and value == pytest.approx(1.0, abs=1e-5)
    varied, _ = mean_pairwise_similarity(_images(30, 128), n_pairs=50)
    assert varied < 0.9
    small, name = mean_pairwise_similarity(_images(5, 64))
    assert name == "ssim" and small < 1.0


def test_rotate_batch_labels() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    rotated, k = rotate_batch(x)
    for i in range(16):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    assert len(set(k.tolist())) > 1


def _asymmetric_slices(n: int, seed: int) -> SliceSet:
    """A bright blob in one corner (class 0: small, class 1: large): rotations are visible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    images, classes = [], rng.integers(0, 2, n)
    for c in classes:
        r = 6 + 6 * c + rng.integers(0, 2)
        img = ((yy - 16) ** 2 + (xx - 20) ** 2 < r**2) * 200 + rng.integers(0, 30, (64, 64))
        images.append(img.astype(np.uint8))
    return SliceSet(
        np.stack(images),
        [f"s{i}" for i in range(n)],
        [f"f{i}" for i in range(n)],
        classes=classes,
        class_names=["small", "large"],
    )


def test_feature_network_learns_rotation_and_class_and_is_cached(tmp_path: Path) -> None:
    train, val = _asymmetric_slices(192, 0), _asymmetric_slices(64, 1)
    net = feature_net(
        tmp_path, "synthetic", {"size": 64}, train, val, epochs=4, device="cpu", batch_size=16
    )
    assert isinstance(net, FeatureNet) and net.cls is not None and net.position is None
    rows = __import__("json").loads(
        next((tmp_path / "features").glob("*/history.json")).read_text()
    )
    assert rows[-1]["val_rotation_acc"] > 0.8 and rows[-1]["val_class_acc"] > 0.8, rows[-1]
    f = extract(net, val.images)
    assert f["features"].shape == (64, 128) and f["class_prob"].shape == (64, 2)
    again = feature_net(
        tmp_path, "synthetic", {"size": 64}, train, val, epochs=4, device="cpu", batch_size=16
    )  # loaded, not retrained
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_feature_network_does_not_depend_on_what_ran_before(tmp_path: Path) -> None:
    """Its initial weights are seeded: evaluate-samples (which samples first) and the
    sampling sweep (which does not) train the same network on a fresh run."""
    train, val = _asymmetric_slices(32, 0), _asymmetric_slices(16, 1)
    nets = []
    for i in range(2):
        torch.manual_seed(100 + i)  # a different global random state each time
        torch.rand(7)
        nets.append(
            feature_net(tmp_path / str(i), "s", {"size": 64}, train, val, 1, "cpu", batch_size=16)
        )
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_real_reference_scales() -> None:
    torch.manual_seed(0)
    fnet = FeatureNet(0, False).eval()
    train = _images(40, 128, seed=3)
    noise = np.random.default_rng(4).integers(-3, 4, (10, 128, 128))
    held = np.clip(train[:10].astype(int) + noise, 0, 255).astype(np.uint8)  # near-copies
    ref = real_reference(fnet, held, train, n=25, rng=np.random.default_rng(0), n_pairs=30)
    assert len(ref.ref_idx) == 25 and len(set(ref.ref_idx)) == 25
    assert np.all(np.diff(ref.ref_idx) > 0)  # sorted, as the reconstructions index them
    assert ref.train["features"].shape == (25, 128) and ref.held["features"].shape == (10, 128)
    np.testing.assert_allclose(
        ref.train["features"], extract(fnet, train[ref.ref_idx])["features"], rtol=1e-6
    )
    assert ref.nn_ssim.shape == (10,) and ref.nn_ssim.min() > 0.9  # each finds its original
    assert ref.nn_ssim_p99 == pytest.approx(np.percentile(ref.nn_ssim, 99))
    assert ref.diversity == pytest.approx(mean_pairwise_similarity(held, 30, 0)[0])
    same = real_reference(fnet, train, train, n=40, rng=np.random.default_rng(1), n_pairs=30)
    assert same.frechet_real_vs_real == pytest.approx(0.0, abs=1e-6)  # the whole set: itself
    assert ref.frechet_real_vs_real > 10 * abs(same.frechet_real_vs_real)
    again = real_reference(fnet, held, train, n=25, rng=np.random.default_rng(0), n_pairs=30)
    assert np.array_equal(again.ref_idx, ref.ref_idx)  # the same seed, the same reference


def test_feature_network_lock_makes_a_second_process_wait(tmp_path: Path) -> None:
    """Two evaluations of one run must not train the feature network at once: the second
    waits on the lock until the first is done, then finds the finished network."""
    import subprocess
    import sys
    import time

    lock = tmp_path / "features" / "key.lock"
    code = (
        "import sys, time; from pathlib import Path;"
        "from oasisvq.evaluate.features import exclusive\n"
        "with exclusive(Path(sys.argv[1])): print(time.time())"
    )
    with exclusive(lock):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(2.0)
        assert child.poll() is None  # still waiting for the lock
        released = time.time()
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and float(out) >= released
