"""Volume figures in ``oasisvq.figures``: orthogonal views oriented as documented, and
valid PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oasisvq import figures as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (20, 24, 28)  # X (left -> right), Y (posterior -> anterior), Z (inferior -> superior)


def _head(n: int = 1, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """``(n, X, Y, Z)`` noisy ellipsoid 'heads' in [0, 1]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    head = (sum(g**2 for g in grids) < 0.8).astype(np.float32) * 0.6
    return np.clip(head + 0.05 * rng.standard_normal((n, *shape)), 0, 1).astype(np.float32)


def _marker_volume(at: tuple[int, int, int]) -> np.ndarray:
    vol = np.zeros(SHAPE, np.float32)
    vol[at] = 1.0
    return vol


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert 100 <= w <= 8000 and 80 <= h <= 8000, (w, h)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return w, h


def _where(view: np.ndarray) -> tuple[int, int]:
    """(row, column) of the single bright pixel of a view."""
    assert view.max() == 1.0 and (view == 1.0).sum() == 1
    r, c = np.unravel_index(int(np.argmax(view)), view.shape)
    return int(r), int(c)


def test_orthogonal_slices_put_a_left_anterior_superior_marker_where_expected() -> None:
    at = (3, 20, 24)  # left (small x), anterior (large y), superior (large z)
    sag, cor, ax = F.orthogonal_slices(_marker_volume(at), point=at)
    x, y, z = SHAPE
    assert sag.shape == (z, y) and cor.shape == (z, x) and ax.shape == (y, x)
    # sagittal: superior up, anterior right
    assert _where(sag) == (z - 1 - 24, 20)
    # coronal: superior up, subject's left on the image left
    assert _where(cor) == (z - 1 - 24, 3)
    # axial: anterior up, subject's left on the image left
    assert _where(ax) == (y - 1 - 20, 3)
    for view in (sag, cor, ax):
        assert _where(view)[0] < view.shape[0] // 2  # superior / anterior: upper half


def test_orthogonal_slices_right_posterior_inferior_and_default_centre() -> None:
    x, y, z = SHAPE
    at = (x - 2, 1, 2)  # right, posterior, inferior
    sag, cor, ax = F.orthogonal_slices(torch.from_numpy(_marker_volume(at))[None], point=at)
    assert _where(sag) == (z - 1 - 2, 1)  # low, on the left (posterior)
    assert _where(cor) == (z - 1 - 2, x - 2)  # low, on the right (subject's right)
    assert _where(ax) == (y - 1 - 1, x - 2)  # bottom (posterior), right
    centre = (x // 2, y // 2, z // 2)
    default = F.orthogonal_slices(_marker_volume(centre))  # slices through the centre
    assert [_where(v) for v in default] == [
        (z - 1 - z // 2, y // 2),
        (z - 1 - z // 2, x // 2),
        (y - 1 - y // 2, x // 2),
    ]
    away = F.orthogonal_slices(_marker_volume(centre), point=(0, 0, 0))
    assert all(v.max() == 0 for v in away)


def test_orthogonal_slices_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        F.orthogonal_slices(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="outside"):
        F.orthogonal_slices(np.zeros(SHAPE), point=(0, 24, 0))
    with pytest.raises(ValueError, match="outside"):
        F.orthogonal_slices(np.zeros(SHAPE), point=(-1, 0, 0))


def test_volume_views_writes_a_png(tmp_path: Path) -> None:
    out = F.volume_views(_head()[0], tmp_path / "sub" / "v.png", title="sample 0")
    assert out == tmp_path / "sub" / "v.png"
    w, h = _assert_png(out)
    assert w > h  # three views side by side
    _assert_png(F.volume_views(torch.from_numpy(_head())[:1], tmp_path / "t.png", point=(2, 3, 4)))


@pytest.mark.parametrize("n", [1, 3])
def test_orthogonal_views_figure_writes_one_row_per_subject(tmp_path: Path, n: int) -> None:
    x = _head(n)
    r = np.clip(x + 0.05, 0, 1)
    path = F.orthogonal_views_figure(
        x, r, tmp_path / "views.png", titles=[f"s{i}" for i in range(n)]
    )
    w, h = _assert_png(path)
    if n == 3:
        _, h1 = _assert_png(F.orthogonal_views_figure(x[:1], r[:1], tmp_path / "one.png"))
        assert h > 2 * h1  # rows stack


def test_orthogonal_views_figure_accepts_channels_and_checks_input(tmp_path: Path) -> None:
    x = torch.from_numpy(_head(2))[:, None]  # (N, 1, X, Y, Z) tensors are accepted
    path = tmp_path / "v.png"
    _assert_png(F.orthogonal_views_figure(x, x, path, ssim_values=[1.0, 1.0], point=(5, 6, 7)))
    with pytest.raises(ValueError):
        F.orthogonal_views_figure(x, x[:1], path)
    with pytest.raises(ValueError):
        F.orthogonal_views_figure(x, x, path, titles=["only one"])
    with pytest.raises(ValueError):
        F.orthogonal_views_figure(x, x, path, ssim_values=[1.0])
    tiny = _head(1, (8, 9, 10))  # below the SSIM window: no score, still drawn
    _assert_png(F.orthogonal_views_figure(tiny, tiny, tmp_path / "tiny.png"))
