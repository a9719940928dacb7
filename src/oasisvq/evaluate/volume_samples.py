"""What a volume prior generates, measured: memorisation and diversity of sampled volumes.

The volume counterparts of the ``memorisation`` and ``diversity`` sections of
:mod:`oasisvq.evaluate.samples`, under the same key names, on plain arrays so that any
reader or model can use them. Volumes are ``(N, X, Y, Z)`` (or ``(N, 1, X, Y, Z)``)
uint8, or float in ``[0, 1]``, all of one shape.

* ``memorisation``: each sample's SSIM-3D (:func:`oasisvq.metrics.ssim3d`) to its
  nearest training volume (``nn_ssim_*``), the same for the real held-out volumes
  (``nn_ssim_real_*``), and ``memorised_share``: the share of samples closer to the
  training split than ``nn_ssim_real_p99``, the 99th percentile of the held-out
  volumes' nearest-training SSIM, with its 95% interval and the share real held-out
  volumes reach by the same rule (:func:`oasisvq.evaluate.reference.memorised_shares`).
* ``diversity``: mean MS-SSIM-3D (:func:`oasisvq.metrics.ms_ssim3d`) over random pairs
  of samples (``samples``) and of held-out volumes (``real``); as in 2D this is a
  similarity: lower = more diverse, 1 = all alike (zero diversity).

Nearest neighbours: an exhaustive SSIM-3D search over all training volumes is too slow
for a CPU (a pair of 128^3 volumes costs about 0.25 s on one core), so each query is
compared by exact SSIM-3D with its ``candidates`` (default 5) nearest training volumes
in L2 distance between volumes area-downsampled ``PREFILTER_FACTOR`` (4) times along
every axis (means over 4 x 4 x 4 blocks); the reported neighbour is the best of those
by SSIM. A copy of a training volume is its own L2 nearest, so copies are always found.

Diversity uses ``n_pairs`` random pairs of distinct volumes drawn from ``seed`` (all
pairs when there are fewer), as :func:`oasisvq.evaluate.reference.random_pairs` draws
them in 2D; the default is 200 against 2000 for 2D images, since an MS-SSIM-3D pair of
128^3 volumes costs about 0.6 s on one core (some 2 minutes for 200).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from oasisvq import metrics
from oasisvq.evaluate.reference import (
    MEMORISED_PERCENTILE,
    memorised_shares,
    nearest_neighbours,
    random_pairs,
)
from oasisvq.evaluate.samples import FLAT_KEYS

PREFILTER_FACTOR = 4
CANDIDATES = 5
N_PAIRS = 200
DIVERSITY_METRIC = "ms_ssim3d"

# the top-level aliases of the 2D result whose sections are measured here
VOLUME_FLAT_KEYS = {
    alias: key for alias, key in FLAT_KEYS.items() if key[0] in ("memorisation", "diversity")
}

__all__ = [
    "nearest_volumes",
    "mean_pairwise_volume_similarity",
    "volume_memorisation",
    "volume_diversity",
    "evaluate_volume_samples",
    "PREFILTER_FACTOR",
    "CANDIDATES",
    "N_PAIRS",
    "VOLUME_FLAT_KEYS",
]


def _check(volumes: np.ndarray | Tensor, name: str) -> tuple[int, int, int]:
    """The ``(X, Y, Z)`` of ``(N, X, Y, Z)`` or ``(N, 1, X, Y, Z)`` volumes."""
    shape = tuple(volumes.shape)
    if len(shape) == 5 and shape[1] == 1:
        shape = shape[:1] + shape[2:]
    if len(shape) != 4:
        raise ValueError(f"{name}: expected (N, X, Y, Z) volumes, got shape {tuple(volumes.shape)}")
    return shape[1:]


def _same_shape(**volumes: np.ndarray | Tensor) -> tuple[int, int, int]:
    """The common ``(X, Y, Z)`` of several volume arrays; ``ValueError`` when they differ."""
    shapes = {name: _check(v, name) for name, v in volumes.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"volumes differ in shape: {shapes}")
    return next(iter(shapes.values()))


def _as_float(volumes: np.ndarray | Tensor) -> Tensor:
    """``(n, X, Y, Z)`` (or ``(n, 1, X, Y, Z)``) uint8 or float -> ``(n, 1, X, Y, Z)``
    float32 in [0, 1]."""
    x = volumes if isinstance(volumes, Tensor) else torch.from_numpy(np.array(volumes))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x if x.ndim == 5 else x[:, None]


def _take(volumes: np.ndarray | Tensor, idx: np.ndarray) -> Tensor:
    """Volumes ``idx`` as ``(len(idx), 1, X, Y, Z)`` float32 (reads only those from a map)."""
    if isinstance(volumes, Tensor):
        return _as_float(volumes[torch.from_numpy(idx)])
    return _as_float(np.asarray(volumes)[idx])


def _small(volumes: np.ndarray | Tensor, batch: int = 8) -> Tensor:
    """``(N, D)`` vectors of the volumes area-downsampled ``PREFILTER_FACTOR`` times."""
    side = [math.ceil(s / PREFILTER_FACTOR) for s in _check(volumes, "volumes")]
    out = [
        F.adaptive_avg_pool3d(_take(volumes, np.arange(s, min(s + batch, len(volumes)))), side)
        for s in range(0, len(volumes), batch)
    ]
    return torch.cat(out).flatten(1)


@torch.no_grad()
def nearest_volumes(
    queries: np.ndarray | Tensor, refs: np.ndarray | Tensor, candidates: int = CANDIDATES
) -> tuple[np.ndarray, np.ndarray]:
    """For each query volume its most similar reference volume by SSIM-3D.

    queries ``(n, X, Y, Z)``, refs ``(N, X, Y, Z)`` (uint8, or float in [0, 1]; sides
    ``>= 11``). The SSIM search is restricted to the ``candidates`` nearest references in
    L2 between 4x downsampled volumes (see the module docstring). Returns ``index (n,)``
    int64 into refs and ``ssim (n,)`` float64.
    """
    _same_shape(queries=queries, refs=refs)
    if len(refs) == 0:
        raise ValueError("no reference volumes to search")
    k = min(candidates, len(refs))
    cand = torch.cdist(_small(queries), _small(refs)).topk(k, dim=1, largest=False).indices
    best_idx, best_ssim = [], []
    for q in range(len(queries)):  # one query against its k candidates per SSIM batch
        x = _take(queries, np.array([q]))
        scores = metrics.ssim3d(x.expand(k, *x.shape[1:]), _take(refs, cand[q].numpy()))
        j = int(scores.argmax())
        best_idx.append(int(cand[q, j]))
        best_ssim.append(float(scores[j]))
    return np.array(best_idx, dtype=np.int64), np.array(best_ssim, dtype=np.float64)


def nearest_search(dims: int):
    """The nearest-training search of ``evaluate-samples`` for images (2) or volumes (3):
    ``(queries, refs) -> (index, ssim)``."""
    return nearest_volumes if dims == 3 else nearest_neighbours


@torch.no_grad()
def mean_pairwise_volume_similarity(
    volumes: np.ndarray | Tensor, n_pairs: int = N_PAIRS, seed: int = 0, batch_size: int = 2
) -> tuple[float, str]:
    """Mean MS-SSIM-3D over ``n_pairs`` random pairs of distinct volumes (all pairs when
    fewer), drawn from ``seed``. volumes: ``(N, X, Y, Z)`` with sides ``>= 13``.
    Returns ``(mean, metric name)``; NaN for fewer than two volumes."""
    _check(volumes, "volumes")
    if len(volumes) < 2:
        return math.nan, DIVERSITY_METRIC
    i, j = random_pairs(len(volumes), n_pairs, seed)
    vals = [
        metrics.ms_ssim3d(
            _take(volumes, i[s : s + batch_size]), _take(volumes, j[s : s + batch_size])
        )
        for s in range(0, len(i), batch_size)
    ]
    return float(torch.cat(vals).double().mean()), DIVERSITY_METRIC


def volume_memorisation(
    samples: np.ndarray | Tensor,
    train: np.ndarray | Tensor,
    held: np.ndarray | Tensor,
    candidates: int = CANDIDATES,
    reconstructions: dict[str, np.ndarray | Tensor] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Nearest training volumes of the samples against those of the held-out volumes.

    samples ``(n, X, Y, Z)``, train ``(N, X, Y, Z)``, held ``(m, X, Y, Z)``. Returns the
    ``memorisation`` section (keys as in 2D) and the neighbours found, ``{"idx": (n,)
    training indices, "ssim": (n,)}`` (for figures).

    reconstructions: ``{"train": (N, ...), "held": (m, ...)}``, the volumes passed through
    the autoencoder. With them the same search runs in reconstruction space (keys
    ``*_recon_space``), where samples and references share the decoder's smoothing: a
    smooth decoder alone raises a sample's SSIM to raw training volumes, and
    ``memorised_share_of_real_reconstructions`` is the raw measure of the held-out
    volumes' own reconstructions: what a prior that drew new subjects perfectly scores."""
    _same_shape(samples=samples, train=train, held=held)
    if len(held) == 0:
        raise ValueError("no held-out volumes: the memorisation threshold needs some")
    nn_idx, nn_ssim = nearest_volumes(samples, train, candidates)
    _, real_ssim = nearest_volumes(held, train, candidates)
    threshold = float(np.percentile(real_ssim, MEMORISED_PERCENTILE))
    out = {
        "nn_ssim_mean": float(nn_ssim.mean()),
        "nn_ssim_median": float(np.median(nn_ssim)),
        "nn_ssim_real_mean": float(real_ssim.mean()),
        "nn_ssim_real_p99": threshold,
        **memorised_shares(nn_ssim, real_ssim),
    }
    if reconstructions is not None:
        recon_train, recon_held = reconstructions["train"], reconstructions["held"]
        _same_shape(
            samples=samples, train_reconstructions=recon_train, held_reconstructions=recon_held
        )
        _, rnn_ssim = nearest_volumes(samples, recon_train, candidates)
        _, rreal_ssim = nearest_volumes(recon_held, recon_train, candidates)
        _, held_recon_ssim = nearest_volumes(recon_held, train, candidates)
        rthreshold = float(np.percentile(rreal_ssim, MEMORISED_PERCENTILE))
        out.update(
            {
                # what a prior drawing exactly the held-out volumes' codes would score
                "memorised_share_of_real_reconstructions": float(
                    (held_recon_ssim > threshold).mean()
                ),
                "nn_ssim_mean_recon_space": float(rnn_ssim.mean()),
                "nn_ssim_real_mean_recon_space": float(rreal_ssim.mean()),
                "nn_ssim_real_p99_recon_space": rthreshold,
                "memorised_share_recon_space": float((rnn_ssim > rthreshold).mean()),
            }
        )
    return out, {"idx": nn_idx, "ssim": nn_ssim}


def volume_diversity(
    samples: np.ndarray | Tensor,
    held: np.ndarray | Tensor,
    n_pairs: int = N_PAIRS,
    seed: int = 0,
    held_reconstructions: np.ndarray | Tensor | None = None,
) -> dict:
    """The ``diversity`` section: mean pairwise MS-SSIM-3D of the samples, of the real
    held-out volumes and, when given, of their reconstructions (keys as in 2D)."""
    out = {
        "metric": DIVERSITY_METRIC,
        "samples": mean_pairwise_volume_similarity(samples, n_pairs, seed)[0],
        "real": mean_pairwise_volume_similarity(held, n_pairs, seed)[0],
    }
    if held_reconstructions is not None:
        out["real_reconstructions"] = mean_pairwise_volume_similarity(
            held_reconstructions, n_pairs, seed
        )[0]
    return out


def evaluate_volume_samples(
    samples: np.ndarray | Tensor,
    train: np.ndarray | Tensor,
    held: np.ndarray | Tensor,
    *,
    candidates: int = CANDIDATES,
    n_pairs: int = N_PAIRS,
    seed: int = 0,
    reconstructions: dict[str, np.ndarray | Tensor] | None = None,
) -> dict:
    """Memorisation and diversity of sampled volumes against real ones.

    samples ``(n, X, Y, Z)``, train ``(N, X, Y, Z)``, held ``(m, X, Y, Z)`` (and
    optionally ``reconstructions``: ``{"train", "held"}`` of the same shapes, see
    :func:`volume_memorisation`): uint8, or float in [0, 1]. Returns
    ``{"setup", "memorisation", "diversity"}`` sections as in
    :func:`oasisvq.evaluate.samples.evaluate_samples` plus its top-level aliases of those
    sections (``VOLUME_FLAT_KEYS``: ``nn_ssim_mean``, ``memorised_share``,
    ``diversity_ms_ssim_samples``, ``diversity_ms_ssim_real``).
    """
    shape = _same_shape(samples=samples, train=train, held=held)
    result: dict = {
        "setup": {
            "n_samples": len(samples),
            "n_held_out": len(held),
            "n_train": len(train),
            "shape": list(shape),
            "nearest_neighbour": f"best SSIM-3D of the {candidates} nearest in L2 at "
            f"{PREFILTER_FACTOR}x downsampling",
            "n_pairs": n_pairs,
            "seed": seed,
        },
        "memorisation": volume_memorisation(samples, train, held, candidates, reconstructions)[0],
        "diversity": volume_diversity(
            samples, held, n_pairs, seed, (reconstructions or {}).get("held")
        ),
    }
    result.update({alias: result[s][k] for alias, (s, k) in VOLUME_FLAT_KEYS.items()})
    return result
