"""What a prior of a 3D run generates, measured (``oasisvq evaluate-samples`` on a run of
whole volumes).

The sections of :mod:`oasisvq.evaluate.samples` for volumes:

* ``likelihood``: NLL of the held-out volumes' code grids (as in 2D; with a wrong and
  an unknown condition for conditional priors);
* ``memorisation`` and ``diversity``: :mod:`oasisvq.evaluate.volume_samples` (SSIM-3D to
  the nearest training volume against the held-out volumes' 99th percentile; mean
  pairwise MS-SSIM-3D);
* ``frechet``: the distance between samples and held-out volumes in the features of a
  3D network trained on the real training volumes to tell age and sex
  (:mod:`oasisvq.evaluate.volume_net`, independent of the generator), beside the
  distance between training and held-out volumes (``real_vs_real``, its scale);
* ``conditions``: the same network's predicted age and sex of samples drawn at the
  ages and sexes of random training subjects: ``age_correlation``, ``age_mae`` and
  ``sex_accuracy`` between requested and predicted, beside the network's own on the
  real held-out volumes (``*_real``: the ceiling a perfect generator reaches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oasisvq.data.volumes3d import VolumeSet
from oasisvq.evaluate.features import frechet_distance
from oasisvq.evaluate.samples import (
    EXACT_DECODING,
    FLAT_KEYS,
    SampleEvaluation,
    code_copy_shares,
    draw,
    likelihood,
    open_held,
    setup,
    textured_copies,
    train_and_held_reconstructions,
)
from oasisvq.evaluate.volume_net import (
    VolumeArrays,
    conditioning_fidelity,
    data_key,
    predict,
    real_ceiling,
    volume_net,
)
from oasisvq.evaluate.volume_samples import evaluate_volume_samples, nearest_volumes
from oasisvq.figures import volume_views
from oasisvq.io import write_json
from oasisvq.prior.base import SamplingOptions
from oasisvq.runs import Run
from oasisvq.runs.rundir import FEATURES_DIRS

CONDITION_KEYS = [
    f"{m}{real}" for real in ("", "_real") for m in ("age_correlation", "age_mae", "sex_accuracy")
]
FLAT_KEYS3D = {  # top-level alias -> (section, key): the 2D ones and conditioning fidelity
    **FLAT_KEYS,
    **{key: ("conditions", key) for key in CONDITION_KEYS},
}
FIGURES = 8  # sampled volumes drawn as orthogonal views
VOLUME_EVALUATION = SampleEvaluation(n=64)  # a volume costs ~500x a slice to draw and measure


def _arrays(data: VolumeSet) -> VolumeArrays:
    return VolumeArrays(data.volumes, data.ages, data.sexes)


def evaluate_volume_prior(
    run: Run,
    prior: str | None = None,
    options: SamplingOptions = EXACT_DECODING,
    settings: SampleEvaluation = VOLUME_EVALUATION,
    out_dir: str | Path | None = None,
    json_path: str | Path | None = None,
) -> dict:
    """Measure prior ``prior`` of 3D run ``run`` and ``settings.n`` of its samples (see
    the module docstring). The age/sex network trains once per data (cached in
    ``RUN/features3d/``, selected on the validate split). Writes ``metrics.json`` and
    views of the first samples to ``out_dir`` (default ``RUN/priors/<prior>/eval-samples``)
    and returns the nested result."""
    if options.texture:
        run.texture()  # fitted for this decoder: checked before any long work
    h = open_held(run, prior, settings.split, settings.data_root)
    seed = 0 if options.seed is None else options.seed
    rng = np.random.default_rng(seed)
    cfg = h.prior.cfg
    result: dict = {"setup": setup(h, settings, options), "likelihood": likelihood(h, seed)}
    samples, codes, cond_idx, timing = draw(h, settings.n, options, rng)
    recon = train_and_held_reconstructions(h)
    measured = evaluate_volume_samples(
        samples,
        h.train.volumes,
        h.held.volumes,
        n_pairs=min(settings.n_pairs, 200),
        seed=seed,
        reconstructions=recon,
    )
    result["memorisation"] = {**measured["memorisation"], **code_copy_shares(h, codes)}
    if options.texture:
        threshold = measured["memorisation"]["nn_ssim_real_p99"]
        copies = textured_copies(h, recon["train"], options, threshold, nearest_volumes)
        result["memorisation"].update(copies)
    result["diversity"] = measured["diversity"]
    train, validate = _arrays(h.train), _arrays(run.split("validate", settings.data_root))
    kw = {} if settings.feature_epochs is None else {"epochs": settings.feature_epochs}
    key = data_key(train, validate, kw)
    net = volume_net(train, validate, run.path / FEATURES_DIRS[3], key, **kw)
    p_samples, p_held = predict(net, samples), predict(net, h.held.volumes)
    p_train = predict(net, h.train.volumes)
    result["frechet"] = {
        "samples": frechet_distance(p_samples.features, p_held.features),
        "real_vs_real": frechet_distance(p_train.features, p_held.features),
        "features": "penultimate layer of the age/sex network (evaluate/volume_net.py)",
    }
    conditions: dict = {}
    if cond_idx is not None:
        codes = h.train_codes
        ages = np.where("age" in cfg.condition, codes.ages[cond_idx], np.nan)
        sexes = np.where("sex" in cfg.condition, codes.sexes[cond_idx], -1)
        conditions = conditioning_fidelity(ages, sexes, p_samples)
    result["conditions"] = {**conditions, **real_ceiling(net, _arrays(h.held))}
    result["timing"] = timing
    out = Path(out_dir) if out_dir is not None else run.prior_dir(h.name) / "eval-samples"
    out.mkdir(parents=True, exist_ok=True)
    for i, volume in enumerate(samples[:FIGURES]):
        volume_views(volume, out / f"sample_{i}.png", title=f"sample {i}")
    result["figures"] = str(out)
    result.update(
        {a: result[s].get(k) for a, (s, k) in FLAT_KEYS3D.items() if isinstance(result[s], dict)}
    )
    for path in filter(None, [out / "metrics.json", json_path]):
        write_json(Path(path), result)
    return result
