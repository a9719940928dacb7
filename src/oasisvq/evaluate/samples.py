"""What a prior generates, measured: likelihood, memorisation, diversity, Frechet distance.

``evaluate_samples(RUN, ...)`` (``oasisvq evaluate-samples``) reports, on a held-out
split (``test``, else ``validate``), one section per measure (docs/evaluation.md
defines each):

* ``likelihood``: NLL of the split's code grids under the prior in bits per image,
  beside the uniform bound ``cells * log2(K)``; for conditional priors also with a
  wrong and an unknown condition. A prior without an exact likelihood reports what it
  gives instead and says so (``likelihood.kind``);
* ``memorisation``: each sample's SSIM to its nearest training image against the 99th
  percentile of real held-out images' (``raw``) with its 95% interval and what real
  held-out images score by the same rule (:func:`oasisvq.evaluate.reference.memorised_shares`),
  the same between reconstructions (``recon``: both sides through the same decoder, so
  a copied training grid scores 1), and exact copies of training code grids;
* ``diversity``: mean MS-SSIM over random pairs of samples, of real held-out images
  and of their reconstructions (lower = more diverse);
* ``frechet``: distances in the features of :mod:`oasisvq.evaluate.features` between
  held-out images and samples, beside real-vs-real (its scale), reconstructions (what
  the VQ-VAE alone costs), training reconstructions (the floor a perfect prior scores)
  and mirrored training images;
* ``conditions``: whether samples show the class / position they were drawn with.

A flat alias of the most read keys (``FLAT_KEYS``) is kept at the top level.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.slices import SliceSet
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes3d import split_arrays
from oasisvq.errors import RunError
from oasisvq.evaluate.features import FeatureNet, extract, feature_net, frechet_distance
from oasisvq.evaluate.reference import (
    MEMORISED_PERCENTILE,
    RealReference,
    mean_pairwise_similarity,
    memorised_shares,
    nearest_neighbours,
    real_reference,
    spread,
)
from oasisvq.figures import nearest_neighbour_figure, samples_figure
from oasisvq.io import atomic_write, read_json, write_json
from oasisvq.prior.base import Prior, SamplingOptions
from oasisvq.prior.data import CodeSet
from oasisvq.prior.maskgit import MaskGITPrior
from oasisvq.prior.sampling import sample_codes
from oasisvq.runs import Run
from oasisvq.train.prior_run import uniform_bits
from oasisvq.train.prior_task import nll_per_image

FLAT_KEYS = {  # top-level alias -> (section, key)
    "nll_bits_per_image": ("likelihood", "nll_bits_per_image"),
    "uniform_bits_per_image": ("likelihood", "uniform_bits_per_image"),
    "nn_ssim_mean": ("memorisation", "nn_ssim_mean"),
    "memorised_share": ("memorisation", "memorised_share"),
    "memorised_share_of_real": ("memorisation", "memorised_share_of_real"),
    "diversity_ms_ssim_samples": ("diversity", "samples"),
    "diversity_ms_ssim_real": ("diversity", "real"),
    "frechet_distance": ("frechet", "samples"),
    "frechet_distance_real_vs_real": ("frechet", "real_vs_real"),
}


@dataclass(frozen=True)
class SampleEvaluation:
    """What to measure on: ``n`` samples, the held-out ``split`` (None: test, else
    validate) of ``data_root`` (None: the run's), the feature network's epochs, the
    nearest-neighbour ``candidates`` and the ``n_pairs`` of the diversity measure."""

    n: int = 1000
    split: str | None = None
    data_root: str | None = None
    feature_epochs: int | None = None  # None: the feature network's own default
    candidates: int = 16
    n_pairs: int = 2000


FEATURE_EPOCHS = 6  # of the 2D feature network
EXACT_DECODING = SamplingOptions(precision="fp32")  # samples measured as fp32 decodes them
COPIES = 64  # training reconstructions given the texture: are copies still caught?


@dataclass
class Held:
    """A prior with the held-out and training data it is measured against."""

    run: Run
    name: str
    prior: Prior
    split: str
    held: SliceSet
    train: SliceSet
    held_codes: CodeSet
    train_codes: CodeSet


def setup(h: Held, settings: SampleEvaluation, options: SamplingOptions) -> dict:
    """What was measured: the run, the prior, the split, the sizes and the sampling."""
    cfg = h.prior.cfg
    return {
        "run": str(h.run.path),
        "preset": h.run.config.name,
        "decoder_finetune": h.run.finetune,
        "adversarial_weight": h.run.config.adversarial_weight,
        "prior": h.name,
        "prior_arch": cfg.arch,
        "condition": list(cfg.condition),
        "cond_at": cfg.cond_at if cfg.arch != "pixelcnn" and cfg.condition else None,
        "mirror": cfg.mirror,
        **prior_training(h.run.prior_dir(h.name)),
        "split": h.split,
        "n_samples": settings.n,
        "n_held_out": len(h.held),
        "n_train": len(h.train),
        "grid": list(cfg.grid),
        "codebook_size": cfg.codebook_size,
        "sampling": options.to_dict(),
        **(masked_decoding(h.prior, options) if cfg.arch == "maskgit" else {}),
    }


def masked_decoding(prior: MaskGITPrior, options: SamplingOptions) -> dict:
    """The steps and choice temperature a masked prior drew in: the options' or its own."""
    steps, choice = prior.decoding(options.steps, options.choice_temperature)
    return {"steps": steps, "choice_temperature": choice}


def prior_training(prior_dir: Path) -> dict:
    """The prior's epochs and the minutes its training steps took (its history)."""
    path = prior_dir / "history.json"
    rows = read_json(path, "prior history") if path.is_file() else []
    if not isinstance(rows, list):
        raise RunError(f"{path}: prior history is damaged (expected a list of epochs)")
    return {
        "prior_epochs": len(rows),
        "prior_train_minutes": sum(r.get("epoch_seconds", 0.0) for r in rows) / 60,
    }


def open_held(run: Run, prior: str | None, split: str | None, data_root: str | None) -> Held:
    """Load prior ``prior`` of ``run`` and the codes of the held-out and training splits."""
    name = run.prior_name(prior)
    splits = run.splits(data_root)
    split = split or ("test" if "test" in splits else "validate")
    held, train = run.split(split, data_root), run.split("train", data_root)
    return Held(
        run,
        name,
        run.prior(name),
        split,
        held,
        train,
        run.codes(split, held),
        run.codes("train", train),
    )


def likelihood(h: Held, seed: int) -> dict:
    """NLL of the held-out code grids, bits per image (and per cell)."""
    cfg, dev = h.prior.cfg, h.run.device
    nll = nll_per_image(h.prior, h.held_codes, dev)
    out = {
        "kind": h.prior.likelihood,  # "exact", or "upper bound" (a masked prior's estimate)
        "nll_bits_per_image": float(nll.mean()),
        "uniform_bits_per_image": uniform_bits(cfg),
        "nll_bits_per_cell": float(nll.mean()) / cfg.cells,
    }
    if cfg.condition:
        wrong = _wrong_condition(cfg, h.held_codes, np.random.default_rng([seed, 1]))
        n = len(h.held_codes.codes)
        unknown = {
            "class": np.full(n, -1),
            "position": np.full(n, np.nan, np.float32),
            "age": np.full(n, np.nan, np.float32),
            "sex": np.full(n, -1),
        }
        out["nll_bits_per_image_true_condition"] = out["nll_bits_per_image"]
        out["nll_bits_per_image_wrong_condition"] = float(
            nll_per_image(h.prior, h.held_codes, dev, cond_override=wrong).mean()
        )
        out["nll_bits_per_image_unknown_condition"] = float(
            nll_per_image(h.prior, h.held_codes, dev, cond_override=unknown).mean()
        )
    return out


def _wrong_condition(cfg, codes: CodeSet, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A wrong value of every condition the prior uses: another class, the position
    half a volume away, a shuffled age, the other sex."""
    out: dict[str, np.ndarray] = {}
    if "class" in cfg.condition:
        c = codes.classes.copy()
        n_cls = max(1, len(cfg.class_names))
        known = c >= 0
        c[known] = (c[known] + rng.integers(1, max(2, n_cls), known.sum())) % n_cls
        out["class"] = c
    if "position" in cfg.condition:
        out["position"] = ((codes.positions + 0.5) % 1.0).astype(np.float32)
    if "age" in cfg.condition:
        out["age"] = rng.permutation(codes.ages).astype(np.float32)
    if "sex" in cfg.condition:
        out["sex"] = np.where(codes.sexes >= 0, 1 - codes.sexes, -1)
    return out


def draw(
    h: Held, n: int, options: SamplingOptions, rng: np.random.Generator
) -> tuple[np.ndarray, torch.Tensor, np.ndarray | None, dict]:
    """``n`` samples (conditional priors: conditions of random training grids).

    Returns images ``(n, S, S)`` float32 in [0, 1], codes ``(n, h, w)``, the training
    indices whose conditions were used (or None) and the seconds spent."""
    cond_idx = rng.integers(0, len(h.train_codes), n) if h.prior.cfg.condition else None
    cond = None if cond_idx is None else h.train_codes.cond(cond_idx)
    t0 = time.perf_counter()
    codes = sample_codes(h.prior, n, cond, options)
    t1 = time.perf_counter()
    samples = h.run.decode_samples(codes, options).numpy()
    timing = {"sampling_seconds": t1 - t0, "decoding_seconds": time.perf_counter() - t1}
    return samples, codes, cond_idx, timing


def reconstructions(h: Held, split: str, codes: CodeSet) -> np.ndarray:
    """Decoded code grids of a split as uint8, cached beside the codes."""
    key = json.dumps({"vqvae": h.run.vqvae_fingerprint(), "n": len(codes)})
    path = h.run.path / "priors" / f"recon_{split}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == key:
                return z["images"]
    images = to_uint8(h.run.decode(torch.from_numpy(codes.codes)))
    atomic_write(
        path, lambda tmp: np.savez(tmp.open("wb"), images=images, fingerprint=np.array(key))
    )
    return images


def train_and_held_reconstructions(h: Held) -> dict[str, np.ndarray]:
    """``{"train", "held"}``: the decoded code grids of both splits, uint8 (cached)."""
    return {
        "train": reconstructions(h, "train", h.train_codes),
        "held": reconstructions(h, h.split, h.held_codes),
    }


def code_copy_shares(h: Held, codes: torch.Tensor) -> dict[str, float]:
    """Shares of samples' and of held-out code grids that equal a training grid exactly."""
    train_grids = {g.tobytes() for g in h.train_codes.codes.astype(np.int16)}

    def copies(grids: np.ndarray) -> float:
        return float(np.mean([g.tobytes() in train_grids for g in grids.astype(np.int16)]))

    return {
        "exact_code_copy_share": copies(np.asarray(codes)),
        "held_out_exact_code_copy_share": copies(h.held_codes.codes),
    }


def memorisation(
    h: Held,
    samples: np.ndarray,
    codes: torch.Tensor,
    real: RealReference,
    recon: dict[str, np.ndarray],
    candidates: int,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Nearest training neighbours of samples, raw and in reconstruction space; returns
    the measures and the neighbours (for the figures)."""
    nn_idx, nn_ssim = nearest_neighbours(samples, h.train.images, candidates)
    rnn_idx, rnn_ssim = nearest_neighbours(samples, recon["train"], candidates)
    _, rreal_ssim = nearest_neighbours(recon["held"], recon["train"], candidates)
    threshold = float(np.percentile(rreal_ssim, MEMORISED_PERCENTILE))
    out = {
        "nn_ssim_mean": float(nn_ssim.mean()),
        "nn_ssim_median": float(np.median(nn_ssim)),
        "nn_ssim_real_mean": float(real.nn_ssim.mean()),
        "nn_ssim_real_p99": real.nn_ssim_p99,
        **memorised_shares(nn_ssim, real.nn_ssim),
        "nn_ssim_mean_recon_space": float(rnn_ssim.mean()),
        "nn_ssim_real_mean_recon_space": float(rreal_ssim.mean()),
        "nn_ssim_real_p99_recon_space": threshold,
        "memorised_share_recon_space": float((rnn_ssim > threshold).mean()),
        **code_copy_shares(h, codes),
    }
    found = {"idx": nn_idx, "ssim": nn_ssim, "recon_idx": rnn_idx, "recon_ssim": rnn_ssim}
    return out, found


def textured_copies(
    h: Held,
    recon_train: np.ndarray,
    options: SamplingOptions,
    threshold: float,
    nearest=nearest_neighbours,
) -> dict[str, float]:
    """The memorised rule applied to copies: training scans' own reconstructions
    ``recon_train`` (uint8) with the texture drawn on, up to ``COPIES`` of them. Its share
    is how often a prior that copied training subjects would be caught through the
    texture (1.0: always)."""
    means = torch.from_numpy(recon_train[spread(len(recon_train), COPIES)]).float() / 255
    copies = to_uint8(h.run.texture().apply(means, options.seed))
    ssim = nearest(copies, split_arrays(h.train))[1]
    return {"memorised_share_of_textured_copies": float((ssim > threshold).mean())}


def diversity(
    samples: np.ndarray, real: RealReference, held_recon: np.ndarray, n_pairs: int, seed: int
) -> dict:
    """Mean pairwise MS-SSIM of samples, real held-out images and their reconstructions."""
    value, metric = mean_pairwise_similarity(samples, n_pairs, seed)
    return {
        "metric": metric,
        "samples": value,
        "real": real.diversity,
        "real_reconstructions": mean_pairwise_similarity(held_recon, n_pairs, seed)[0],
    }


def frechet(
    fnet: FeatureNet, h: Held, f_samples: dict, real: RealReference, recon: dict[str, np.ndarray]
) -> tuple[dict, dict]:
    """Frechet distances in the feature network's space; returns them and the features of
    the held-out reconstructions (for the condition checks)."""
    f_held = real.held
    reference = np.asarray(h.train.images)[real.ref_idx]
    f_mirrored = extract(fnet, np.ascontiguousarray(reference[:, :, ::-1]))
    f_recon = extract(fnet, recon["held"])
    f_train_recon = extract(fnet, recon["train"][real.ref_idx])

    def fd(a: dict, b: dict) -> float:
        return frechet_distance(a["features"], b["features"])

    out = {
        "feature_network": "CNN trained on the training split to predict the rotation "
        "(0/90/180/270) of a slice"
        + (", its class" if fnet.cls is not None else "")
        + (", its slice position" if fnet.position is not None else "")
        + "; 128 pooled features",
        "reference": f"{h.split} ({len(h.held)}) vs {len(real.ref_idx)} random training images",
        "samples": fd(f_held, f_samples),
        "real_vs_real": real.frechet_real_vs_real,
        "real_vs_mirrored": fd(f_held, f_mirrored),
        "reconstructions": fd(f_held, f_recon),
        "samples_vs_reconstructions": fd(f_recon, f_samples),
        "reconstructions_real_vs_real": fd(f_recon, f_train_recon),
        "real_vs_train_reconstructions": fd(f_held, f_train_recon),
    }
    return out, f_recon


def conditions(
    h: Held, f_samples: dict, f_held: dict, f_recon: dict, cond_idx: np.ndarray | None
) -> dict:
    """Class and position balance of samples, by the feature network's heads."""
    out: dict = {}
    cfg, train, held = h.prior.cfg, h.train, h.held
    if "class_prob" in f_samples:
        names = list(train.class_names)
        pred = f_samples["class_prob"].argmax(1)

        def share(labels: np.ndarray) -> dict[str, float]:
            return {c: float((labels == i).mean()) for i, c in enumerate(names)}

        out["sample_class_share"] = share(pred)
        out["train_class_share"] = share(train.classes[train.classes >= 0])
        out["held_out_recon_class_share"] = share(f_recon["class_prob"].argmax(1))
        known = held.classes >= 0
        real_pred = f_held["class_prob"].argmax(1)
        out["class_accuracy_real"] = (
            float((real_pred[known] == held.classes[known]).mean()) if known.any() else None
        )
        if cond_idx is not None and "class" in cfg.condition:
            out["class_agreement_samples"] = float((pred == h.train_codes.classes[cond_idx]).mean())
    if "position" in f_samples:
        known = np.isfinite(held.positions)
        if known.any():
            err = np.abs(f_held["position"][known] - held.positions[known])
            out["position_mae_real"] = float(err.mean())
        if cond_idx is not None and "position" in cfg.condition:
            wanted = h.train_codes.positions[cond_idx]
            ok = np.isfinite(wanted)
            out["position_mae_samples"] = float(
                np.abs(f_samples["position"][ok] - wanted[ok]).mean()
            )
    return out


def write_figures(
    out: Path,
    samples: np.ndarray,
    codes: torch.Tensor,
    h: Held,
    found: dict,
    recon_train: np.ndarray,
) -> None:
    """Samples, their nearest training images (raw and reconstructed), the closest ones."""
    k = min(16, len(samples))
    train = np.asarray(h.train.images)
    pairs = {
        "nearest_neighbours.png": (np.arange(k), train[found["idx"][:k]], found["ssim"]),
        "nearest_neighbours_recon_space.png": (
            np.arange(k),
            recon_train[found["recon_idx"][:k]],
            found["recon_ssim"],
        ),
    }
    order = np.argsort(-found["recon_ssim"])[:k]  # the samples closest to a training reconstruction
    pairs["closest_to_training.png"] = (
        order,
        recon_train[found["recon_idx"][order]],
        found["recon_ssim"],
    )
    for name, (rows, neighbours, ssim) in pairs.items():
        nearest_neighbour_figure(samples[rows], neighbours / 255.0, ssim[rows], out / name, n=k)
    samples_figure(
        samples,
        codes,
        out / "samples.png",
        n=min(64, len(samples)),
        n_codes=h.prior.cfg.codebook_size,
    )
    np.save(out / "codes.npy", codes.numpy().astype(np.int16))


@dataclass
class References:
    """What every draw of a prior is measured against: the run's feature network, the
    real held-out images against the training split, and the reconstructions of both."""

    fnet: FeatureNet
    real: RealReference
    recon: dict[str, np.ndarray]  # "train" and "held": decoded code grids, uint8


def references(
    h: Held, settings: SampleEvaluation, rng: np.random.Generator, seed: int
) -> References:
    """The :class:`References` of ``h`` (the Frechet reference subset drawn from ``rng``)."""
    run = h.run
    root = settings.data_root if settings.data_root is not None else run.data_root
    splits = run.splits(settings.data_root)
    fnet = feature_net(
        run.path,
        root,
        run.saved["data"],
        h.train,
        splits.get("validate"),
        settings.feature_epochs or FEATURE_EPOCHS,
    )
    real = real_reference(
        fnet,
        h.held.images,
        h.train.images,
        settings.n,
        rng,
        settings.candidates,
        settings.n_pairs,
        seed,
    )
    return References(fnet, real, train_and_held_reconstructions(h))


def measure_samples(
    h: Held,
    refs: References,
    samples: np.ndarray,
    codes: torch.Tensor,
    cond_idx: np.ndarray | None,
    settings: SampleEvaluation,
    seed: int,
) -> tuple[dict, dict]:
    """One draw measured: the ``memorisation``, ``diversity``, ``frechet`` and
    ``conditions`` sections, and the nearest neighbours found (for the figures)."""
    out: dict = {}
    out["memorisation"], found = memorisation(
        h, samples, codes, refs.real, refs.recon, settings.candidates
    )
    out["diversity"] = diversity(samples, refs.real, refs.recon["held"], settings.n_pairs, seed)
    f_samples = extract(refs.fnet, samples)
    out["frechet"], f_recon = frechet(refs.fnet, h, f_samples, refs.real, refs.recon)
    out["conditions"] = conditions(h, f_samples, refs.real.held, f_recon, cond_idx)
    return out, found


def evaluate_samples(
    run: Run,
    prior: str | None = None,
    options: SamplingOptions = EXACT_DECODING,
    settings: SampleEvaluation = SampleEvaluation(),
    out_dir: str | Path | None = None,
    json_path: str | Path | None = None,
) -> dict:
    """Measure prior ``prior`` of ``run`` and ``settings.n`` of its samples (see the module
    docstring). Writes ``metrics.json`` and figures to ``out_dir`` (default
    ``RUN/priors/<prior>/eval-samples``) and returns the nested result."""
    if options.texture:
        run.texture()  # fitted for this decoder: checked before any long work
    h = open_held(run, prior, settings.split, settings.data_root)
    seed = 0 if options.seed is None else options.seed
    rng = np.random.default_rng(seed)
    result: dict = {"setup": setup(h, settings, options), "likelihood": likelihood(h, seed)}
    refs = references(h, settings, rng, seed)
    samples, codes, cond_idx, timing = draw(h, settings.n, options, rng)
    measured, found = measure_samples(h, refs, samples, codes, cond_idx, settings, seed)
    if options.texture:
        copies = textured_copies(h, refs.recon["train"], options, refs.real.nn_ssim_p99)
        measured["memorisation"].update(copies)
    result.update(measured)
    result["timing"] = timing
    out = Path(out_dir) if out_dir is not None else run.prior_dir(h.name) / "eval-samples"
    write_figures(out, samples, codes, h, found, refs.recon["train"])
    result["figures"] = str(out)
    result.update({alias: result[s][k] for alias, (s, k) in FLAT_KEYS.items()})
    for path in filter(None, [out / "metrics.json", json_path]):
        write_json(Path(path), result)
    return result
