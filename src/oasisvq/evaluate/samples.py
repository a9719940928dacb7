"""What a prior generates, measured: likelihood, fidelity, memorisation, diversity, Frechet distance.

``evaluate_samples(RUN, ...)`` (``oasisvq evaluate-samples``) reports, on a held-out
split (``test``, else ``validate``):

* **NLL** of the split's code grids under the prior in bits per image, beside the
  uniform bound ``cells * log2(K)``;
* **fidelity / memorisation**: each sample's SSIM to its nearest training image, and
  the share of samples closer to a training image than 99 % of real held-out images
  are (``memorised_share``). Two spaces are reported: ``raw`` compares decoded samples
  and real held-out images with the raw training images (the literal definition);
  ``recon`` compares samples and held-out *reconstructions* with training
  *reconstructions*, so both sides went through the same decoder and a sample that
  copies a training grid scores SSIM 1 (the sharper copy test). The share of samples
  whose code grid equals a training grid exactly is given too;
* **diversity**: mean MS-SSIM over random pairs of samples, of real held-out images
  and of their reconstructions (lower = more diverse);
* **Frechet distance** between real held-out images and samples in the features of
  :mod:`oasisvq.evaluate.features` (a CNN trained on the same data to recognise
  rotations, and classes / slice positions where known), beside the same distance
  between the held-out split and an equally large subset of the training split
  (its scale) and between the held-out images and their reconstructions (what the
  VQ-VAE alone costs). Decoded images are blurrier than real ones, which the features
  see, so the prior's own share is given apart: samples against reconstructions of
  the held-out images, beside held-out against training reconstructions (its scale).
  The held-out images against those training reconstructions are what a perfect prior
  (one that draws reconstructions of unseen brains) would score: the floor the VQ-VAE
  sets for ``frechet_distance``.
  The held-out images against the same training subset mirrored left-right show how
  far brains in the other left-right convention are from the data;
* for conditional priors: NLL with the true, a wrong and an unknown condition, and
  whether samples show the condition they were drawn with (by the feature network's
  class / position heads).

Nearest neighbours: an exhaustive SSIM search (1000 samples x 4000+ training images at
128x128) is too slow for a CPU, so each query is compared by exact SSIM with its
``candidates`` (default 16) nearest training images in L2 distance between 32x32
area-downsampled images; the reported neighbour is the best of those by SSIM.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from oasisvq.evaluate import metrics
from oasisvq.io import atomic_write, write_json

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


@torch.no_grad()
def mean_pairwise_similarity(
    images: np.ndarray | Tensor, n_pairs: int = 2000, seed: int = 0, batch_size: int = 128
) -> tuple[float, str]:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct images (all pairs when fewer).

    Images too small for MS-SSIM (<= 96 px) use SSIM. Returns ``(mean, metric name)``."""
    n = len(images)
    if n < 2:
        return math.nan, "ms_ssim"
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= n_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, n_pairs)
        j = (i + rng.integers(1, n, n_pairs)) % n
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
    from oasisvq.evaluate.features import extract

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
    from oasisvq.evaluate.features import frechet_distance

    held, ref_idx, train = frechet_reference(fnet, held_images, train_images, n, rng)
    _, nn_ssim = nearest_neighbours(held_images, train_images, candidates)
    return RealReference(
        held=held,
        ref_idx=ref_idx,
        train=train,
        frechet_real_vs_real=frechet_distance(held["features"], train["features"]),
        nn_ssim=nn_ssim,
        nn_ssim_p99=float(np.percentile(nn_ssim, 99)),
        diversity=mean_pairwise_similarity(held_images, n_pairs, seed)[0],
    )


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data)


def _cached_recon(run_dir: Path, split: str, codes: np.ndarray, model, key: str) -> np.ndarray:
    """Reconstructions (decoded codes) of a split as uint8, cached beside the codes."""
    from oasisvq.sample.sampler import decode_codes, to_uint8

    path = run_dir / "priors" / f"recon_{split}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == key:
                return z["images"]
    images = to_uint8(decode_codes(model, torch.from_numpy(codes)))
    atomic_write(
        path, lambda tmp: np.savez(tmp.open("wb"), images=images, fingerprint=np.array(key))
    )
    return images


def _wrong_condition(cfg, codes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A wrong value of every condition the prior uses: another class, the position
    half a volume away, a shuffled age."""
    out: dict[str, np.ndarray] = {}
    if "class" in cfg.condition:
        c = codes.classes.copy()
        n_cls = max(1, len(cfg.class_names))
        known = c >= 0
        c[known] = (c[known] + rng.integers(1, max(2, n_cls), known.sum())) % n_cls
        out["cls"] = c
    if "position" in cfg.condition:
        out["pos"] = ((codes.positions + 0.5) % 1.0).astype(np.float32)
    if "age" in cfg.condition:
        out["age"] = rng.permutation(codes.ages).astype(np.float32)
    return out


def evaluate_samples(
    run_dir: str | Path,
    data_root: str | None = None,
    prior: str | None = None,
    n: int = 1000,
    split: str | None = None,
    out_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    feature_epochs: int = 6,
    candidates: int = 16,
    n_pairs: int = 2000,
) -> dict:
    """Measure prior ``prior`` of VQ-VAE run ``run_dir`` and ``n`` of its samples; see the
    module docstring. Writes ``metrics.json`` and figures to ``out_dir`` (default
    ``RUN/priors/<prior>/eval-samples``) and returns the summary."""
    import oasisvq
    from oasisvq.data.loader import get_split, load_splits
    from oasisvq.evaluate.features import extract, feature_net, frechet_distance
    from oasisvq.evaluate.figures import nearest_neighbour_figure, samples_figure
    from oasisvq.prior.data import cached_codes, vqvae_fingerprint
    from oasisvq.prior.run import (
        data_options,
        load_prior,
        resolve_prior_name,
        uniform_bits,
        vqvae_config,
    )
    from oasisvq.prior.task import nll_per_image
    from oasisvq.sample.sampler import decode_codes, sample_codes
    from oasisvq.train.distributed import pick_device

    run_dir = Path(run_dir)
    dev = pick_device(device)
    vq = vqvae_config(run_dir)
    name = resolve_prior_name(run_dir, prior)
    model = oasisvq.load(run_dir, dev)
    p, saved = load_prior(run_dir, name, dev)
    cfg = p.cfg
    root = data_root if data_root is not None else vq.get("data_root")
    opts = data_options(vq)
    splits = load_splits(root, opts)
    split = split or ("test" if "test" in splits else "validate")
    held, train = get_split(splits, split, root), get_split(splits, "train", root)
    held_codes = cached_codes(run_dir, split, held, model.vqvae, dev)
    train_codes = cached_codes(run_dir, "train", train, model.vqvae, dev)
    rng = np.random.default_rng(seed)
    summary: dict = {
        "run": str(run_dir),
        "preset": model.config.name,
        "decoder_finetune": vq.get("finetune"),  # set when the decoder was trained further
        "adversarial_weight": model.config.adversarial_weight,
        "prior": name,
        "prior_arch": cfg.arch,
        "condition": list(cfg.condition),
        "mirror": cfg.mirror,
        "split": split,
        "n_samples": n,
        "n_held_out": len(held),
        "n_train": len(train),
        "temperature": temperature,
        "top_k": top_k,
        "guidance": guidance,
        "seed": seed,
        "grid": list(cfg.grid),
        "codebook_size": cfg.codebook_size,
    }

    # ---- likelihood
    nll = nll_per_image(p, held_codes, dev)
    summary["nll_bits_per_image"] = float(nll.mean())
    summary["uniform_bits_per_image"] = uniform_bits(cfg)
    summary["nll_bits_per_cell"] = float(nll.mean()) / cfg.cells
    if cfg.condition:
        # its own stream: the draws below (conditions, reference images) stay those of the
        # same seed in benchmarks/sampling_sweep.py
        wrong = _wrong_condition(cfg, held_codes, np.random.default_rng([seed, 1]))
        unknown = {
            "cls": np.full(len(held), -1),
            "pos": np.full(len(held), np.nan, np.float32),
            "age": np.full(len(held), np.nan, np.float32),
        }
        summary["nll_bits_per_image_true_condition"] = summary["nll_bits_per_image"]
        summary["nll_bits_per_image_wrong_condition"] = float(
            nll_per_image(p, held_codes, dev, cond_override=wrong).mean()
        )
        summary["nll_bits_per_image_unknown_condition"] = float(
            nll_per_image(p, held_codes, dev, cond_override=unknown).mean()
        )

    # ---- samples (conditional priors: conditions drawn from the training split)
    cond, cond_idx = None, None
    if cfg.condition:
        cond_idx = rng.integers(0, len(train_codes), n)
        cond = train_codes.cond(cond_idx)
    # the feature network and what real held-out images score: every measure's scale
    fnet = feature_net(
        run_dir, root, vq["data"], train, splits.get("validate"), feature_epochs, device
    )
    real = real_reference(fnet, held.images, train.images, n, rng, candidates, n_pairs, seed)
    t0 = time.perf_counter()
    codes = sample_codes(p, n, cond, temperature, top_k, seed, batch_size, guidance)
    t1 = time.perf_counter()
    samples = decode_codes(model, codes, precision=precision).numpy()
    summary["sampling_seconds"] = t1 - t0
    summary["decoding_seconds"] = time.perf_counter() - t1

    # ---- memorisation and fidelity
    nn_idx, nn_ssim = nearest_neighbours(samples, train.images, candidates)
    summary.update(
        nn_ssim_mean=float(nn_ssim.mean()),
        nn_ssim_median=float(np.median(nn_ssim)),
        nn_ssim_real_mean=float(real.nn_ssim.mean()),
        nn_ssim_real_p99=real.nn_ssim_p99,
        memorised_share=float((nn_ssim > real.nn_ssim_p99).mean()),
    )
    key = json.dumps({"vqvae": vqvae_fingerprint(run_dir), "n": len(train)})
    train_recon = _cached_recon(run_dir, "train", train_codes.codes, model, key)
    held_recon = _cached_recon(
        run_dir,
        split,
        held_codes.codes,
        model,
        json.dumps({"vqvae": vqvae_fingerprint(run_dir), "n": len(held)}),
    )
    rnn_idx, rnn_ssim = nearest_neighbours(samples, train_recon, candidates)
    _, rreal_ssim = nearest_neighbours(held_recon, train_recon, candidates)
    rthreshold = float(np.percentile(rreal_ssim, 99))
    train_grids = {g.tobytes() for g in train_codes.codes.astype(np.int16)}
    summary.update(
        nn_ssim_mean_recon_space=float(rnn_ssim.mean()),
        nn_ssim_real_mean_recon_space=float(rreal_ssim.mean()),
        nn_ssim_real_p99_recon_space=rthreshold,
        memorised_share_recon_space=float((rnn_ssim > rthreshold).mean()),
        exact_code_copy_share=float(
            np.mean([g.tobytes() in train_grids for g in codes.numpy().astype(np.int16)])
        ),
        held_out_exact_code_copy_share=float(
            np.mean([g.tobytes() in train_grids for g in held_codes.codes.astype(np.int16)])
        ),
    )

    # ---- diversity
    div_s, metric = mean_pairwise_similarity(samples, n_pairs, seed)
    summary.update(
        diversity_metric=metric,
        diversity_ms_ssim_samples=div_s,
        diversity_ms_ssim_real=real.diversity,
        diversity_ms_ssim_real_recon=mean_pairwise_similarity(held_recon, n_pairs, seed)[0],
    )

    # ---- Frechet distance in the features of a network trained on the data
    f_held, ref_idx = real.held, real.ref_idx
    f_samples = extract(fnet, samples)
    reference = np.asarray(train.images)[ref_idx]
    f_mirrored = extract(fnet, np.ascontiguousarray(reference[:, :, ::-1]))
    f_recon = extract(fnet, held_recon)
    f_train_recon = extract(fnet, train_recon[ref_idx])
    summary.update(
        feature_network="CNN trained on the training split to predict the rotation (0/90/180/270) of a slice"
        + (", its class" if fnet.cls is not None else "")
        + (", its slice position" if fnet.position is not None else "")
        + "; 128 pooled features",
        frechet_distance=frechet_distance(f_held["features"], f_samples["features"]),
        frechet_distance_real_vs_real=real.frechet_real_vs_real,
        # the same training images mirrored left-right: how far a brain in the other
        # left-right convention is from this data (what a prior trained on mirrored slices risks)
        frechet_distance_real_vs_mirrored=frechet_distance(
            f_held["features"], f_mirrored["features"]
        ),
        frechet_distance_reconstructions=frechet_distance(f_held["features"], f_recon["features"]),
        frechet_real_reference=f"{split} ({len(held)}) vs {len(ref_idx)} random training images",
        # the prior alone: samples against reconstructions of real images (same decoder on both sides)
        frechet_distance_vs_reconstructions=frechet_distance(
            f_recon["features"], f_samples["features"]
        ),
        frechet_distance_reconstructions_real_vs_real=frechet_distance(
            f_recon["features"], f_train_recon["features"]
        ),
        # a perfect prior draws reconstructions of unseen brains: the floor of frechet_distance
        frechet_distance_real_vs_train_reconstructions=frechet_distance(
            f_held["features"], f_train_recon["features"]
        ),
    )

    # ---- class / position balance of samples, by the feature network's heads
    if "cls_prob" in f_samples:
        names = list(train.class_names)
        pred = f_samples["cls_prob"].argmax(1)
        known_train = train.classes[train.classes >= 0]
        recon_pred = f_recon["cls_prob"].argmax(1)
        summary["sample_class_share"] = {c: float((pred == i).mean()) for i, c in enumerate(names)}
        summary["train_class_share"] = {
            c: float((known_train == i).mean()) for i, c in enumerate(names)
        }
        # the reference for decoded images: what the classifier makes of real reconstructions
        summary["held_out_recon_class_share"] = {
            c: float((recon_pred == i).mean()) for i, c in enumerate(names)
        }
        real_pred = f_held["cls_prob"].argmax(1)
        known = held.classes >= 0
        summary["class_accuracy_real"] = (
            float((real_pred[known] == held.classes[known]).mean()) if known.any() else math.nan
        )
        if cond is not None and "class" in cfg.condition:
            wanted = train_codes.classes[cond_idx]
            summary["class_agreement_samples"] = float((pred == wanted).mean())
    if "pos" in f_samples:
        known = np.isfinite(held.positions)
        summary["position_mae_real"] = (
            float(np.abs(f_held["pos"][known] - held.positions[known]).mean())
            if known.any()
            else math.nan
        )
        if cond is not None and "position" in cfg.condition:
            wanted = train_codes.positions[cond_idx]
            ok = np.isfinite(wanted)
            summary["position_mae_samples"] = float(
                np.abs(f_samples["pos"][ok] - wanted[ok]).mean()
            )

    # ---- figures and files
    out = Path(out_dir) if out_dir is not None else run_dir / "priors" / name / "eval-samples"
    k = min(16, n)
    nearest_neighbour_figure(
        samples[:k],
        np.asarray(train.images)[nn_idx[:k]] / 255.0,
        nn_ssim[:k],
        out / "nearest_neighbours.png",
        n=k,
    )
    nearest_neighbour_figure(
        samples[:k],
        train_recon[rnn_idx[:k]] / 255.0,
        rnn_ssim[:k],
        out / "nearest_neighbours_recon_space.png",
        n=k,
    )
    order = np.argsort(-rnn_ssim)[:k]  # the samples closest to a training reconstruction
    nearest_neighbour_figure(
        samples[order],
        train_recon[rnn_idx[order]] / 255.0,
        rnn_ssim[order],
        out / "closest_to_training.png",
        n=k,
    )
    samples_figure(samples, codes, out / "samples.png", n=min(64, n), n_codes=cfg.codebook_size)
    np.save(out / "codes.npy", codes.numpy().astype(np.int16))
    summary["figures"] = str(out)
    _write_json(out / "metrics.json", summary)
    if json_path is not None:
        _write_json(Path(json_path), summary)
    return summary
