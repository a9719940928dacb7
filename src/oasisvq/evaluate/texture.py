"""Fit a run's scan texture (what ``oasisvq fit-texture`` runs).

1. Decode the training split's own code grids and fit the residual's texture
   (:func:`oasisvq.model.texture.fit_texture`) on up to ``FIT_ITEMS`` of them.
2. Choose its scale on the training split alone: for ``queries`` training subjects, the
   SSIM of their textured reconstruction to the nearest scan of the *other* training
   subjects, at each of ``SCALES``, against the same for their real scans. The scale
   where the two means meet (linear between the bracketing scales) is kept, so that
   textured samples lie no nearer the training scans than new real scans would: the
   premise of the memorised share of ``evaluate-samples``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes3d import split_arrays
from oasisvq.errors import DataError
from oasisvq.evaluate.reference import spread
from oasisvq.evaluate.volume_samples import nearest_search
from oasisvq.model.texture import Texture, fit_texture
from oasisvq.runs import Run

FIT_ITEMS = 2000  # images or volumes whose residual the texture is fitted on
QUERIES = 40  # training subjects the scale is chosen on
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def fit_run_texture(
    run: Run, data_root: str | None = None, queries: int = QUERIES
) -> tuple[Texture, dict]:
    """The texture of ``run``'s decoder with its scale chosen (see the module docstring)
    and what was measured on the way."""
    t0 = time.perf_counter()
    train = run.split("train", data_root)
    if len(set(train.subjects)) < 2:
        raise DataError(
            f"{run.path}: fitting a texture needs a training split of 2 subjects or more"
        )
    items = split_arrays(train)  # (N, *shape) uint8
    pick = spread(len(items), FIT_ITEMS)
    codes = run.codes("train", train).codes[pick]
    recon = to_uint8(run.decode(torch.from_numpy(codes)))  # (n, *shape)
    texture = fit_texture(items[pick], recon)
    subjects = np.asarray(train.subjects)[pick]
    q = spread(len(pick), queries)
    real_nn, textured_nn = [], []
    for i in q:
        others = np.asarray(train.subjects) != subjects[i]
        refs = items[others]
        real_nn.append(_nearest(run.dims, items[pick[i]][None], refs)[0])
        mean = torch.from_numpy(recon[i]).float() / 255  # (*shape)
        noise = texture.noise(mean, torch.Generator().manual_seed(int(i)))
        textured = torch.stack([(mean + s * noise).clamp(0, 1) for s in SCALES])  # (scales, ...)
        textured_nn.append(_nearest(run.dims, to_uint8(textured), refs))
    target = float(np.mean(real_nn))
    curve = np.stack(textured_nn).mean(0)  # mean nearest SSIM at each scale
    texture.scale = crossing(SCALES, curve, target)
    return texture, {
        "items_fitted": len(pick),
        "subjects_measured": len(real_nn),
        "nn_ssim_real_mean": target,
        "nn_ssim_by_scale": dict(zip(map(str, SCALES), map(float, curve), strict=True)),
        "scale": texture.scale,
        "seconds": time.perf_counter() - t0,
    }


def crossing(scales: tuple[float, ...], curve: np.ndarray, target: float) -> float:
    """The scale where ``curve`` (falling with scale) first reaches ``target``, linear
    between the bracketing scales; the ends when it never does."""
    for j in range(1, len(scales)):
        if curve[j] <= target:
            a, b = curve[j - 1], curve[j]
            w = 0.0 if a == b else (a - target) / (a - b)
            return float(scales[j - 1] + min(max(w, 0.0), 1.0) * (scales[j] - scales[j - 1]))
    return float(scales[0] if curve[0] <= target else scales[-1])


def _nearest(dims: int, queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    return nearest_search(dims)(queries, refs)[1]
