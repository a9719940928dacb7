"""Figures for reconstructions, samples, inpaintings, nearest neighbours, volumes and
training curves.

All functions draw on a bare :class:`matplotlib.figure.Figure` with the Agg
canvas (no pyplot state, never a window), save a 150 dpi PNG atomically (written to
``<path>.tmp.png`` then renamed over ``path``; parent folders are created) and
return the path. Inputs may be numpy arrays or CPU tensors:

* images: ``(N, H, W)`` (or ``(N, 1, H, W)``) float in ``[0, 1]`` (clipped for display);
* code maps: ``(N, h, w)`` integer code indices in ``[0, K)``;
* volumes: ``(N, X, Y, Z)`` (or ``(N, 1, X, Y, Z)``) float in ``[0, 1]``, RAS voxel
  order (x runs left -> right, y posterior -> anterior, z inferior -> superior),
  shown as three orthogonal slices (see :func:`orthogonal_slices`).

Asking for more examples than given (``n > N``) simply shows all ``N``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from oasisvq.io import atomic_write
from oasisvq.metrics import SSIM_WIN_SIZE, ssim, ssim3d

DPI = 150
IMAGE_CMAP = "gray"
DIFF_CMAP = "inferno"
_GRID_LINES_MAX = 64  # draw code-cell borders only up to this many cells per side

__all__ = [
    "reconstruction_figure",
    "samples_figure",
    "image_grid",
    "inpainting_figure",
    "nearest_neighbour_figure",
    "orthogonal_slices",
    "volume_views",
    "orthogonal_views_figure",
    "curves_figure",
]


# --------------------------------------------------------------------------- helpers


def _to_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


_BATCH_SHAPES = {2: "(N, H, W) images", 3: "(N, X, Y, Z) volumes"}


def _as_images(a: np.ndarray | torch.Tensor, name: str, dims: int = 2) -> np.ndarray:
    """``(N, *S)`` or ``(N, 1, *S)`` with ``dims`` spatial axes -> ``(N, *S)`` float32
    clipped to ``[0, 1]``."""
    arr = _to_numpy(a)
    if arr.ndim == dims + 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != dims + 1:
        raise ValueError(f"{name}: expected {_BATCH_SHAPES[dims]}, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _as_codes(a: np.ndarray | torch.Tensor, name: str = "codes") -> np.ndarray:
    """``(N, h, w)`` (or ``(N, 1, h, w)``) integer code maps as int64."""
    arr = _to_numpy(a)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected (N, h, w) code maps, got shape {arr.shape}")
    return arr.astype(np.int64)


def _check_len(n_expected: int, **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if len(arr) != n_expected:
            raise ValueError(f"{name} has {len(arr)} entries, expected {n_expected}")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (tmp file then ``os.replace``)."""
    return atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", facecolor="white", bbox_inches="tight"),
    )


def _code_cmap(n_codes: int) -> tuple[ListedColormap, BoundaryNorm]:
    """A discrete colormap of ``n_codes`` well-separated colours, fixed across calls.

    Colours come from ``turbo`` in a fixed shuffled order so that neighbouring
    code indices (often similar in a trained codebook) still look different.
    """
    n_codes = max(int(n_codes), 1)
    order = np.random.default_rng(0).permutation(n_codes)
    colours = matplotlib.colormaps["turbo"]((order + 0.5) / n_codes)
    cmap = ListedColormap(colours, name=f"codes{n_codes}")
    return cmap, BoundaryNorm(np.arange(n_codes + 1) - 0.5, n_codes)


def _show_image(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    _clean(ax, title)


def _show_codes(ax: Axes, codes: np.ndarray, n_codes: int, title: str | None = None) -> None:
    """Draw a ``(h, w)`` code map with discrete colours and the cell grid."""
    cmap, norm = _code_cmap(n_codes)
    h, w = codes.shape
    ax.imshow(codes, cmap=cmap, norm=norm, interpolation="nearest")
    if max(h, w) <= _GRID_LINES_MAX:
        lw = 0.6 if max(h, w) <= 16 else 0.3
        ax.set_xticks(np.arange(-0.5, w, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, h, 1.0), minor=True)
        ax.grid(which="minor", color="white", linewidth=lw, alpha=0.6)
        ax.tick_params(which="minor", length=0)
    _clean(ax, title)


def _clean(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8, pad=3)


def _codebook_size(codes: np.ndarray, n_codes: int | None) -> int:
    """The number of colours to use: ``n_codes`` if given, else ``codes.max() + 1``."""
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    if lo < 0 or (n_codes is not None and hi >= n_codes):
        raise ValueError(f"code indices span [{lo}, {hi}], outside [0, {n_codes})")
    return int(n_codes) if n_codes is not None else hi + 1


def _hide(axes: Sequence[Axes]) -> None:
    for ax in axes:
        ax.set_axis_off()


def _ssim_scores(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray | None:
    """Per-image SSIM (project definition) or ``None`` when images are too small."""
    if min(originals.shape[1:]) < 11:
        return None
    x = torch.from_numpy(originals)[:, None]
    y = torch.from_numpy(reconstructions)[:, None]
    with torch.no_grad():
        return ssim(x, y).numpy()


# --------------------------------------------------------------------------- figures


def reconstruction_figure(
    originals: np.ndarray | torch.Tensor,
    codes: np.ndarray | torch.Tensor,
    reconstructions: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    ssim_values: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    n: int = 8,
    *,
    n_codes: int | None = None,
) -> Path:
    """Rows of original | code map | reconstruction | absolute difference.

    originals, reconstructions: ``(N, H, W)`` in ``[0, 1]``; codes: ``(N, h, w)``
    ints; ssim_values: ``(N,)`` or ``None`` (then computed with
    :func:`oasisvq.metrics.ssim` when ``H, W >= 11``). The first
    ``min(n, N)`` examples are shown; each reconstruction's title gives its SSIM.
    The difference column shares one colour scale, shown by a colourbar beside row 1.
    n_codes: the codebook size K, fixing the code colours and shown in the header
    (default: ``codes.max() + 1``, not shown).
    """
    x = _as_images(originals, "originals")
    r = _as_images(reconstructions, "reconstructions")
    c = _as_codes(codes)
    if x.shape != r.shape:
        raise ValueError(f"originals {x.shape} and reconstructions {r.shape} differ")
    _check_len(len(x), codes=c)
    k = min(n, len(x))
    if k == 0:
        raise ValueError("no examples to draw")
    if ssim_values is None:
        scores = _ssim_scores(x[:k], r[:k])
    else:
        scores = _to_numpy(ssim_values).astype(np.float64).ravel()
        _check_len(len(x), ssim_values=scores)
    diff = np.abs(x[:k] - r[:k])
    vmax = max(float(diff.max()), 1e-3)
    h, w = c.shape[1:]
    code_head = f"Codes ({h}\u00d7{w}" + (f", K={n_codes})" if n_codes else ")")
    n_codes = _codebook_size(c, n_codes)
    fig = _new_figure(4 * 1.9 + 0.4, k * 1.9 + 0.3)
    axes = fig.subplots(k, 4, squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.18})
    heads = ["Original", code_head, "Reconstruction", "|Difference|"]
    for i in range(k):
        row = axes[i]
        _show_image(row[0], x[i])
        _show_codes(row[1], c[i], n_codes)
        rec_title = f"SSIM {scores[i]:.3f}" if scores is not None else None
        _show_image(row[2], r[i], rec_title)
        im = row[3].imshow(diff[i], cmap=DIFF_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
        _clean(row[3], None)
    for j, head in enumerate(heads):
        top = axes[0][j]
        sub = top.get_title()
        top.set_title(f"{head}\n{sub}" if sub else head, fontsize=8, pad=3)
    cax = axes[0][3].inset_axes([1.04, 0.0, 0.05, 1.0])  # beside the first row, no resizing
    cbar = fig.colorbar(im, cax=cax)
    cbar.ax.tick_params(labelsize=7)
    return _save(fig, path)


def samples_figure(
    images: np.ndarray | torch.Tensor,
    codes: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    n: int = 16,
    *,
    n_codes: int | None = None,
) -> Path:
    """A grid of ``min(n, N)`` samples, each shown beside its code map.

    images: ``(N, H, W)`` in ``[0, 1]``; codes: ``(N, h, w)`` ints. The pairs are
    arranged in about ``sqrt(n)`` pairs per row. n_codes: codebook size K fixing
    the code colours (default ``codes.max() + 1``).
    """
    x = _as_images(images, "images")
    c = _as_codes(codes)
    _check_len(len(x), codes=c)
    k = min(n, len(x))
    if k == 0:
        raise ValueError("no samples to draw")
    n_codes = _codebook_size(c, n_codes)
    pairs_per_row = min(k, math.ceil(math.sqrt(k)))
    rows = math.ceil(k / pairs_per_row)
    fig = _new_figure(pairs_per_row * 2 * 1.5, rows * 1.55)
    axes = fig.subplots(
        rows, 2 * pairs_per_row, squeeze=False, gridspec_kw={"wspace": 0.03, "hspace": 0.12}
    )
    for i in range(rows * pairs_per_row):
        r, p = divmod(i, pairs_per_row)
        ax_img, ax_code = axes[r][2 * p], axes[r][2 * p + 1]
        if i >= k:
            _hide([ax_img, ax_code])
            continue
        _show_image(ax_img, x[i], f"sample {i}")
        _show_codes(ax_code, c[i], n_codes, "codes")
    return _save(fig, path)


def image_grid(
    images: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    ncol: int = 8,
    titles: Sequence[str] | None = None,
) -> Path:
    """All ``N`` images in a plain grid of ``ncol`` columns (fewer when ``N < ncol``).

    images: ``(N, H, W)`` in ``[0, 1]``; titles: ``N`` strings or ``None``.
    """
    x = _as_images(images, "images")
    if len(x) == 0:
        raise ValueError("no images to draw")
    if titles is not None and len(titles) != len(x):
        raise ValueError(f"{len(titles)} titles for {len(x)} images")
    cols = max(1, min(ncol, len(x)))
    rows = math.ceil(len(x) / cols)
    fig = _new_figure(cols * 1.5, rows * (1.6 if titles else 1.5))
    axes = fig.subplots(
        rows, cols, squeeze=False, gridspec_kw={"wspace": 0.03, "hspace": 0.15 if titles else 0.03}
    )
    for i, ax in enumerate(axes.flat):
        if i < len(x):
            _show_image(ax, x[i], titles[i] if titles is not None else None)
        else:
            ax.set_axis_off()
    return _save(fig, path)


def inpainting_figure(
    image: np.ndarray | torch.Tensor,
    reconstruction: np.ndarray | torch.Tensor,
    cell_mask: np.ndarray | torch.Tensor,
    inpainted: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
) -> Path:
    """One row: the input image, its reconstruction with the resampled code cells shaded,
    then every inpainting.

    image, reconstruction: ``(H, W)`` in ``[0, 1]``; cell_mask: ``(h, w)`` bool, True =
    resampled; inpainted: ``(N, H, W)`` in ``[0, 1]``.
    """
    x = _as_images(np.stack([_to_numpy(image), _to_numpy(reconstruction)]), "image")
    out = _as_images(inpainted, "inpainted")
    mask = _to_numpy(cell_mask).astype(bool)
    if len(out) == 0:
        raise ValueError("no inpaintings to draw")
    fig = _new_figure((2 + len(out)) * 1.5, 1.7)
    axes = fig.subplots(1, 2 + len(out), squeeze=False, gridspec_kw={"wspace": 0.03})[0]
    _show_image(axes[0], x[0], "input")
    _show_image(axes[1], x[1], f"reconstruction, {int(mask.sum())} cells resampled")
    h, w = x.shape[1:]
    shade = np.kron(mask, np.ones((h // mask.shape[0], w // mask.shape[1])))
    axes[1].imshow(np.ma.masked_equal(shade, 0), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
    for i, img in enumerate(out):
        _show_image(axes[2 + i], img, f"inpainted {i}")
    return _save(fig, path)


def nearest_neighbour_figure(
    samples: np.ndarray | torch.Tensor,
    neighbours: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor | Sequence[float],
    path: str | os.PathLike[str],
    n: int = 8,
) -> Path:
    """Generated samples (upper row) above their nearest training images (lower row).

    samples, neighbours: ``(N, H, W)`` in ``[0, 1]``; scores: ``(N,)`` SSIM between
    each sample and its neighbour, printed over the neighbour. Shows ``min(n, N)``
    pairs, at most 8 per row pair.
    """
    s = _as_images(samples, "samples")
    nb = _as_images(neighbours, "neighbours")
    sc = _to_numpy(scores).astype(np.float64).ravel()
    _check_len(len(s), neighbours=nb, scores=sc)
    k = min(n, len(s))
    if k == 0:
        raise ValueError("no samples to draw")
    cols = min(k, 8)
    bands = math.ceil(k / cols)
    fig = _new_figure(cols * 1.5, bands * 3.3)
    axes = fig.subplots(2 * bands, cols, squeeze=False, gridspec_kw={"wspace": 0.03, "hspace": 0.2})
    for i in range(bands * cols):
        b, j = divmod(i, cols)
        top, bottom = axes[2 * b][j], axes[2 * b + 1][j]
        if i >= k:
            _hide([top, bottom])
            continue
        _show_image(top, s[i], f"#{i}")
        _show_image(bottom, nb[i], f"SSIM {sc[i]:.3f}")
        if j == 0:
            top.set_ylabel("sample", fontsize=8)
            bottom.set_ylabel("nearest train", fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- volumes

VIEW_NAMES = ("sagittal", "coronal", "axial")
_VIEW_INCHES = 1.7  # height of one view panel


def orthogonal_slices(
    volume: np.ndarray | torch.Tensor, point: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sagittal, coronal and axial slices through ``point``, oriented for display.

    volume: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) in RAS voxel order: x runs left ->
    right, y posterior -> anterior, z inferior -> superior. point: voxel ``(x, y, z)``
    the slices pass through (default: the centre, ``(X // 2, Y // 2, Z // 2)``).
    Returns three 2D float32 arrays, row 0 at the top of the picture, in the display
    convention of the 2D slices of :mod:`oasisvq.data.volumes`:

    * sagittal ``(Z, Y)``: superior up, anterior on the right;
    * coronal ``(Z, X)``: superior up, the subject's right on the image right;
    * axial ``(Y, X)``: anterior up, the subject's right on the image right.

    The coronal and axial views are thus seen from the front and from above (the
    neurological convention, not the radiological one); values are not clipped.
    """
    vol = _to_numpy(volume)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {vol.shape}")
    at = tuple(s // 2 for s in vol.shape) if point is None else tuple(int(p) for p in point)
    if len(at) != 3 or not all(0 <= p < s for p, s in zip(at, vol.shape, strict=True)):
        raise ValueError(f"point {at} is outside the volume {vol.shape}")
    x, y, z = at
    # each plane's first RAS axis runs along the columns, its second up the rows
    planes = (vol[x, :, :], vol[:, y, :], vol[:, :, z])
    sag, cor, ax = (np.ascontiguousarray(p.T[::-1], dtype=np.float32) for p in planes)
    return sag, cor, ax


def _view_ratios(shape: Sequence[int]) -> tuple[list[int], float]:
    """Panel width ratios ``[Y, X, X]`` and the inches per voxel of ``(X, Y, Z)`` views."""
    x, y, z = shape
    return [y, x, x], _VIEW_INCHES / max(z, y)


def _show_views(axes: Sequence[Axes], views: Sequence[np.ndarray], **style) -> AxesImage:
    """Draw three views on three axes; returns the last image (for a colourbar)."""
    opts = {"cmap": IMAGE_CMAP, "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"} | style
    for ax, view in zip(axes, views, strict=True):
        im = ax.imshow(view, **opts)
        _clean(ax, None)
    return im


def volume_views(
    volume: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    point: Sequence[int] | None = None,
) -> Path:
    """One volume's sagittal, coronal and axial slices side by side as a PNG.

    volume: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) in ``[0, 1]``, RAS voxel order; point:
    the voxel the slices pass through (default the centre). Orientation as in
    :func:`orthogonal_slices`; each panel is titled with its view.
    """
    vol = _as_images(_to_numpy(volume)[None], "volume", dims=3)[0]
    views = orthogonal_slices(vol, point)
    widths, scale = _view_ratios(vol.shape)
    fig = _new_figure(sum(widths) * scale + 0.3, _VIEW_INCHES + (0.6 if title else 0.35))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": widths, "wspace": 0.05})
    _show_views(axes, views)
    for ax, name in zip(axes, VIEW_NAMES, strict=True):
        ax.set_title(name, fontsize=8, pad=3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _ssim3d_scores(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray | None:
    """Per-volume SSIM-3D or ``None`` when a side is shorter than the window."""
    if min(originals.shape[1:]) < SSIM_WIN_SIZE:
        return None
    x = torch.from_numpy(originals)[:, None]
    y = torch.from_numpy(reconstructions)[:, None]
    with torch.no_grad():
        return np.concatenate([ssim3d(x[i : i + 1], y[i : i + 1]).numpy() for i in range(len(x))])


def orthogonal_views_figure(
    originals: np.ndarray | torch.Tensor,
    reconstructions: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    *,
    point: Sequence[int] | None = None,
    ssim_values: np.ndarray | torch.Tensor | Sequence[float] | None = None,
) -> Path:
    """One row per subject: the sagittal, coronal and axial slices of the original, of
    the reconstruction and of their absolute difference.

    originals, reconstructions: ``(N, X, Y, Z)`` (or ``(N, 1, X, Y, Z)``) in ``[0, 1]``,
    RAS voxel order, one shape; titles: ``N`` row labels or ``None``; point: the voxel
    all slices pass through (default the centre); ssim_values: ``(N,)`` or ``None``
    (then :func:`oasisvq.metrics.ssim3d` of each pair when every side is ``>= 11``),
    written under each row's label. Orientation as in :func:`orthogonal_slices`
    (superior up in sagittal and coronal views, anterior up in axial ones, the
    subject's right on the image right). The difference panels share one colour
    scale, shown by a colourbar beside the first row.
    """
    x = _as_images(originals, "originals", dims=3)
    r = _as_images(reconstructions, "reconstructions", dims=3)
    if x.shape != r.shape:
        raise ValueError(f"originals {x.shape} and reconstructions {r.shape} differ")
    if len(x) == 0:
        raise ValueError("no volumes to draw")
    if titles is not None and len(titles) != len(x):
        raise ValueError(f"{len(titles)} titles for {len(x)} volumes")
    if ssim_values is None:
        scores = _ssim3d_scores(x, r)
    else:
        scores = _to_numpy(ssim_values).astype(np.float64).ravel()
        _check_len(len(x), ssim_values=scores)
    diffs = np.abs(x - r)
    vmax = max(float(diffs.max()), 1e-3)
    widths, scale = _view_ratios(x.shape[1:])
    fig = _new_figure(3 * sum(widths) * scale + 1.2, len(x) * (_VIEW_INCHES + 0.2) + 0.4)
    axes = fig.subplots(
        len(x), 9, squeeze=False, gridspec_kw={"width_ratios": widths * 3, "wspace": 0.05}
    )
    for i in range(len(x)):
        row = axes[i]
        _show_views(row[0:3], orthogonal_slices(x[i], point))
        _show_views(row[3:6], orthogonal_slices(r[i], point))
        im = _show_views(row[6:9], orthogonal_slices(diffs[i], point), cmap=DIFF_CMAP, vmax=vmax)
        label = [titles[i]] if titles is not None else []
        label += [f"SSIM {scores[i]:.3f}"] if scores is not None else []
        row[0].set_ylabel("\n".join(label), fontsize=8)
    for j, head in enumerate(("Original", "Reconstruction", "|Difference|")):
        for k, name in enumerate(VIEW_NAMES):
            axes[0][3 * j + k].set_title(f"{head}\n{name}" if k == 0 else name, fontsize=8, pad=3)
    cax = axes[0][8].inset_axes([1.06, 0.0, 0.08, 1.0])  # beside the first row, no resizing
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------- curves

# ``train_*`` keys whose suffix contains one of these are not losses: they get
# their own panel (or join their ``val_*`` twin) rather than the losses panel.
_NOT_LOSS = ("codes_used", "perplexity", "per_second", "seconds", "ssim", "psnr", "accuracy")


def _is_loss(key: str) -> bool:
    suffix = key.removeprefix("train_")
    return suffix != "lr" and not suffix.endswith("_lr") and not any(w in suffix for w in _NOT_LOSS)


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the entries holding a finite number under ``key``."""
    xs, ys = [], []
    for i, entry in enumerate(history):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            continue
        if not math.isfinite(float(value)):
            continue
        xs.append(float(entry.get("epoch", i + 1)))
        ys.append(float(value))
    return xs, ys


def _keys(history: Sequence[dict], prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for entry in history:
        for key in entry:
            if key.startswith(prefix):
                seen.setdefault(key)
    return list(seen)


def _line(ax: Axes, history: Sequence[dict], key: str, label: str | None, **style) -> list[float]:
    xs, ys = _series(history, key)
    if ys:
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=label, **style)
    return ys


def _plot_losses(ax: Axes, history: Sequence[dict], keys: list[str]) -> None:
    """All training losses on one panel, on a log axis when all are positive."""
    values = [v for key in keys for v in _line(ax, history, key, key.removeprefix("train_"))]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title("training losses", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7, frameon=False)


def _plot_metric(
    ax: Axes, history: Sequence[dict], key: str, twin: str | None, colour: str
) -> None:
    """One metric; a ``val_*`` metric gets its best value (min for losses) starred,
    and its ``train_*`` twin, if any, dashed beside it."""
    is_val = key.startswith("val_")
    ys = _line(ax, history, key, "val" if twin else None, color=colour)
    if twin:
        _line(ax, history, twin, "train", color=colour, linestyle="--", alpha=0.55)
        ax.legend(fontsize=7, frameon=False)
    title = key
    if is_val and ys:
        xs, _ = _series(history, key)
        lower_is_better = "loss" in key or "mse" in key or "nll" in key or "bpd" in key
        best = int(np.argmin(ys) if lower_is_better else np.argmax(ys))
        ax.plot([xs[best]], [ys[best]], marker="*", markersize=9, color=colour, zorder=3)
        title = f"{key}  (best {ys[best]:.4g} @ {xs[best]:g})"
    ax.set_title(title, fontsize=9)


def _panels(history: Sequence[dict]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(training-loss keys, [(metric key, train twin or None), ...]) in display order."""
    train, val = _keys(history, "train_"), _keys(history, "val_")
    losses = [k for k in train if _is_loss(k)]
    metrics = [(k, t if (t := "train_" + k[4:]) in train else None) for k in val]
    twins = {t for _, t in metrics}
    metrics += [(k, None) for k in train if not _is_loss(k) and k not in twins]
    return losses, metrics


def curves_figure(history: Sequence[dict], path: str | os.PathLike[str]) -> Path:
    """Training curves: one panel of the ``train_*`` losses, one per other metric.

    history: one dict per epoch, e.g. ``{"epoch": 3, "train_loss": 0.01,
    "train_perplexity": 80.0, "val_ssim": 0.9, ...}``; x is ``entry["epoch"]``
    (else its 1-based position). Missing, non-numeric and non-finite values are
    skipped; keys starting with neither ``train_`` nor ``val_`` are ignored.

    Panels: the training losses together (log axis when all are positive; a
    ``train_*`` key is a loss unless it names codes_used, perplexity, ssim, psnr,
    accuracy, a rate or a time, or lr); each ``val_*`` metric, with its best value
    starred and given in the title and its ``train_*`` twin (e.g.
    ``train_perplexity``) dashed beside it; each remaining ``train_*`` non-loss
    (e.g. ``train_images_per_second``). An empty history gives a placeholder.
    """
    losses, metrics = _panels(history)
    panels = (1 if losses else 0) + len(metrics)
    if panels == 0:
        fig = _new_figure(4, 2.5)
        fig.text(0.5, 0.5, "no train_/val_ metrics recorded yet", ha="center", va="center")
        return _save(fig, path)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = _new_figure(cols * 3.6, rows * 2.7)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    if losses:
        _plot_losses(axes[0], history, losses)
    for j, (key, twin) in enumerate(metrics):
        _plot_metric(axes[j + (1 if losses else 0)], history, key, twin, f"C{(j + 3) % 10}")
    for ax in axes[:panels]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _hide(axes[panels:])
    fig.tight_layout()
    return _save(fig, path)
