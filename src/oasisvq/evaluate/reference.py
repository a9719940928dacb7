"""What real images score against the training split: nearest neighbours by SSIM, mean
pairwise similarity, and the reference every sample measure is read against.

Nearest neighbours: an exhaustive SSIM search (1000 samples x 4000+ training images at
128x128) is too slow for a CPU, so each query is compared by exact SSIM with its
``candidates`` (default 16) nearest training images in L2 distance between 32x32
area-downsampled images; the reported neighbour is the best of those by SSIM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from oasisvq import metrics
from oasisvq.evaluate.features import extract, frechet_distance

PREFILTER_SIZE = 32


def _as_float(images: np.ndarray | Tensor) -> Tensor:
    """``(N, S, S)`` uint8 or float -> float32 tensor in [0, 1]."""
    x = (
        images if isinstance(images, Tensor) else torch.from_numpy(np.array(images))
    )  # copy: maps are read-only
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _small(images: np.ndarray | Tensor, batch: int = 512) -> Tensor:
    """Area-downsampled ``(N, PREFILTER_SIZE**2)`` vectors for the L2 prefilter."""
    out = []
    for s in range(0, len(images), batch):
        x = _as_float(images[s : s + batch])[:, None]
        out.append(F.adaptive_avg_pool2d(x, PREFILTER_SIZE).flatten(1))
    return torch.cat(out)


@torch.no_grad()
def nearest_neighbours(
    queries: np.ndarray | Tensor,
    refs: np.ndarray | Tensor,
    candidates: int = 16,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query image its most similar reference image by SSIM.

    queries ``(n, S, S)``, refs ``(N, S, S)`` (uint8 or float in [0, 1]). The SSIM search
    is restricted to the ``candidates`` nearest references in L2 at 32x32 (see the module
    docstring). Returns ``index (n,)`` into refs and ``ssim (n,)``.
    """
    q_small, r_small = _small(queries), _small(refs)
    k = min(candidates, len(refs))
    best_idx, best_ssim = [], []
    for s in range(0, len(queries), batch_size):
        d = torch.cdist(q_small[s : s + batch_size], r_small)
        cand = d.topk(k, dim=1, largest=False).indices  # (b, k)
        q = _as_float(queries[s : s + batch_size])
        b = len(q)
        x = q[:, None].expand(b, k, *q.shape[1:]).reshape(b * k, 1, *q.shape[1:])
        y = _as_float(
            np.asarray(refs)[cand.flatten().numpy()]
            if not isinstance(refs, Tensor)
            else refs[cand.flatten()]
        )[:, None]
        scores = metrics.ssim(x, y).view(b, k)
        j = scores.argmax(1)
        best_idx.append(cand[torch.arange(b), j])
        best_ssim.append(scores[torch.arange(b), j])
    return torch.cat(best_idx).numpy(), torch.cat(best_ssim).double().numpy()


MEMORISED_PERCENTILE = 99  # a sample nearer the training split than this share of real is memorised


def memorised_shares(nn_ssim: np.ndarray, real_nn_ssim: np.ndarray) -> dict:
    """The memorised share of samples and what it can be read against.

    nn_ssim ``(n,)``: each sample's SSIM to its nearest training image or volume;
    real_nn_ssim ``(m,)``: the same for the real held-out ones. Returns
    ``memorised_share`` (samples above the held-out values' 99th percentile),
    ``memorised_share_ci95`` (its Wilson 95% interval over the ``n`` samples) and
    ``memorised_share_of_real``: each held-out value against the percentile of the other
    ``m - 1``, the share a generator of new real scans would score. With few held-out
    volumes the percentile is near their maximum, so that share is about ``1 / m``."""
    real = np.asarray(real_nn_ssim, dtype=np.float64)
    threshold = float(np.percentile(real, MEMORISED_PERCENTILE))
    above = int((np.asarray(nn_ssim) > threshold).sum())
    return {
        "memorised_share": above / len(nn_ssim),
        "memorised_share_ci95": wilson_interval(above, len(nn_ssim)),
        "memorised_share_of_real": real_memorised_share(real),
    }


def real_memorised_share(real_nn_ssim: np.ndarray) -> float:
    """The share of real held-out values ``(m,)`` above the 99th percentile of the other
    ``m - 1`` (leave-one-out); NaN for fewer than two."""
    real = np.asarray(real_nn_ssim, dtype=np.float64)
    loo = [
        real[i] > np.percentile(np.delete(real, i), MEMORISED_PERCENTILE)
        for i in range(len(real) if len(real) > 1 else 0)
    ]
    return float(np.mean(loo)) if loo else math.nan


def wilson_interval(k: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score interval ``[low, high]`` of a share ``k / n`` (95% for the default z):
    unlike ``p +- z se`` it stays inside [0, 1] and is not empty at ``k = 0``."""
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def random_pairs(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of pairs of distinct items out of ``n``: all
    ``n (n - 1) / 2`` pairs when there are at most ``n_pairs``, else ``n_pairs`` random
    ones (with repetition) drawn from ``seed``."""
    if n * (n - 1) // 2 <= n_pairs:
        return np.triu_indices(n, 1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    return i, (i + rng.integers(1, n, n_pairs)) % n


@torch.no_grad()
def mean_pairwise_similarity(
    images: np.ndarray | Tensor, n_pairs: int = 2000, seed: int = 0, batch_size: int = 128
) -> tuple[float, str]:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct images (all pairs when fewer).

    Images too small for MS-SSIM (<= 96 px) use SSIM. Returns ``(mean, metric name)``."""
    n = len(images)
    if n < 2:
        return math.nan, "ms_ssim"
    i, j = random_pairs(n, n_pairs, seed)
    size = min(np.asarray(images[:1]).shape[-2:])
    fn, name = (metrics.ms_ssim, "ms_ssim") if size > 96 else (metrics.ssim, "ssim")
    vals = []
    for s in range(0, len(i), batch_size):
        a = _as_float(np.asarray(images)[i[s : s + batch_size]])[:, None]
        b = _as_float(np.asarray(images)[j[s : s + batch_size]])[:, None]
        vals.append(fn(a, b).double())
    return float(torch.cat(vals).mean()), name


@dataclass
class RealReference:
    """What real held-out images score against the training split: the scale of every
    sample measure, computed once per evaluation (or sweep)."""

    held: dict[str, np.ndarray]  # feature-network outputs for the held-out images
    ref_idx: np.ndarray  # (n_ref,) sorted training indices: the Frechet reference subset
    train: dict[str, np.ndarray]  # feature-network outputs for those training images
    frechet_real_vs_real: float  # held-out vs the reference subset
    nn_ssim: np.ndarray  # (n_held,) each held-out image's SSIM to its nearest training image
    nn_ssim_p99: float  # a sample closer to the training split than this is memorised
    diversity: float  # mean pairwise MS-SSIM among held-out images


def frechet_reference(
    fnet: torch.nn.Module,
    held_images: np.ndarray,
    train_images: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Feature-network outputs of the held-out images, ``min(n, N)`` sorted random training
    indices (drawn from ``rng``) and the outputs of those training images."""
    held = extract(fnet, held_images)
    ref_idx = np.sort(rng.choice(len(train_images), size=min(n, len(train_images)), replace=False))
    return held, ref_idx, extract(fnet, np.asarray(train_images)[ref_idx])


def real_reference(
    fnet: torch.nn.Module,
    held_images: np.ndarray,
    train_images: np.ndarray,
    n: int,
    rng: np.random.Generator,
    candidates: int = 16,
    n_pairs: int = 2000,
    seed: int = 0,
) -> RealReference:
    """Measure held-out ``(n_held, S, S)`` uint8 images against training ones: Frechet
    distance to ``min(n, N)`` random training images (drawn from ``rng``), nearest-neighbour
    SSIM and its 99th percentile, and diversity (pairs drawn from ``seed``)."""
    held, ref_idx, train = frechet_reference(fnet, held_images, train_images, n, rng)
    _, nn_ssim = nearest_neighbours(held_images, train_images, candidates)
    return RealReference(
        held=held,
        ref_idx=ref_idx,
        train=train,
        frechet_real_vs_real=frechet_distance(held["features"], train["features"]),
        nn_ssim=nn_ssim,
        nn_ssim_p99=float(np.percentile(nn_ssim, MEMORISED_PERCENTILE)),
        diversity=mean_pairwise_similarity(held_images, n_pairs, seed)[0],
    )
