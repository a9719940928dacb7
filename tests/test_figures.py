"""Figures in ``oasisvq.figures`` are written as valid, non-trivial PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oasisvq import figures as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    head = (xx**2 / 0.6 + yy**2 / 0.8 < 1).astype(np.float32) * 0.7
    return np.clip(head + 0.1 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float32)


def _codes(n: int, side: int = 8, k: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, (n, side, side))


def _assert_png(path: Path, min_w: int = 150, min_h: int = 100) -> tuple[int, int]:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 2_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert min_w <= w <= 8000 and min_h <= h <= 8000, (w, h)
    assert not list(path.parent.glob("*.tmp.png")), "temporary file left behind"
    return w, h


@pytest.mark.parametrize("n_examples", [1, 3, 10])
def test_reconstruction_figure(tmp_path: Path, n_examples: int) -> None:
    x = _images(n_examples)
    r = np.clip(x + 0.05, 0, 1)
    out = F.reconstruction_figure(x, _codes(n_examples), r, tmp_path / "sub" / "recon.png", n=8)
    assert out == tmp_path / "sub" / "recon.png"
    _assert_png(out)


def test_reconstruction_figure_given_ssim_tensors_and_codebook(tmp_path: Path) -> None:
    x = torch.from_numpy(_images(4))[:, None]  # (N, 1, H, W) tensors are accepted
    codes = torch.from_numpy(_codes(4, side=4, k=512))
    path = tmp_path / "recon.png"
    F.reconstruction_figure(x, codes, x, path, ssim_values=[1.0] * 4, n=2, n_codes=512)
    _assert_png(path)
    with pytest.raises(ValueError):
        F.reconstruction_figure(x, codes, x, path, n_codes=8)  # codes exceed the codebook
    with pytest.raises(ValueError):
        F.reconstruction_figure(x, codes[:3], x, path)


def test_reconstruction_figure_tiny_images_skip_ssim(tmp_path: Path) -> None:
    x = _images(2, size=8)
    _assert_png(F.reconstruction_figure(x, _codes(2, side=2), x, tmp_path / "r.png"), 100, 100)


def test_reconstruction_figure_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "recon.png"
    path.write_bytes(b"old")
    F.reconstruction_figure(_images(2), _codes(2), _images(2, seed=1), path)
    _assert_png(path)


@pytest.mark.parametrize("n_examples", [1, 5, 20])
def test_samples_figure(tmp_path: Path, n_examples: int) -> None:
    path = F.samples_figure(_images(n_examples), _codes(n_examples), tmp_path / "s.png", n=16)
    _assert_png(path, min_w=100)


def test_image_grid(tmp_path: Path) -> None:
    _assert_png(F.image_grid(_images(11), tmp_path / "g.png", ncol=4), 100)
    titles = [f"#{i}" for i in range(3)]
    _assert_png(F.image_grid(_images(3), tmp_path / "t.png", titles=titles), 100)
    _assert_png(F.image_grid(_images(1), tmp_path / "one.png"), 50, 50)
    with pytest.raises(ValueError):
        F.image_grid(_images(3), tmp_path / "bad.png", titles=["a"])


@pytest.mark.parametrize("n_examples", [1, 5, 12])
def test_nearest_neighbour_figure(tmp_path: Path, n_examples: int) -> None:
    s, nb = _images(n_examples), _images(n_examples, seed=2)
    scores = np.linspace(0.2, 0.9, n_examples)
    _assert_png(F.nearest_neighbour_figure(s, nb, scores, tmp_path / "nn.png", n=8), 100)


def test_curves_figure(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_commit": 0.1 / e,
            "val_ssim": 0.9 - 0.3 / e,
            "val_psnr": 30 - 5 / e,
            "val_codes_used": 100 + e,
            "val_perplexity": 50.0 + e,
            "train_perplexity": 40.0 + e,
            "train_images_per_second": 300.0,
            "epoch_seconds": 12.0,
            "lr": 1e-3,
        }
        for e in range(1, 6)
    ]
    history[2].pop("val_psnr")  # missing values are skipped
    history[3]["val_ssim"] = float("nan")
    _assert_png(F.curves_figure(history, tmp_path / "curves.png"), 300, 200)
    _assert_png(F.curves_figure(history[:1], tmp_path / "one.png"), 300, 200)


def test_curves_figure_empty_and_train_only(tmp_path: Path) -> None:
    _assert_png(F.curves_figure([], tmp_path / "empty.png"), 100, 50)
    hist = [{"train_loss": -0.5}, {"train_loss": 0.2}]  # non-positive: linear axis
    _assert_png(F.curves_figure(hist, tmp_path / "train.png"), 100, 100)


def test_curves_panels_keep_non_losses_out_of_the_loss_panel() -> None:
    row = {
        "epoch": 1,
        "train_loss": 0.1,
        "train_vq": 0.01,
        "train_mse": 0.003,
        "train_codes_used": 100,
        "train_perplexity": 40.0,
        "train_images_per_second": 300.0,
        "val_ssim": 0.8,
        "val_mse": 0.004,
        "val_perplexity": 50.0,
    }
    losses, metrics = F._panels([row])
    assert losses == ["train_loss", "train_vq", "train_mse"]
    assert metrics == [
        ("val_ssim", None),
        ("val_mse", "train_mse"),
        ("val_perplexity", "train_perplexity"),
        ("train_codes_used", None),
        ("train_images_per_second", None),
    ]
