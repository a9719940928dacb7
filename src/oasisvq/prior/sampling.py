"""Draw code grids from a prior: requested conditions checked against it, batched draws.

Sampling is batched; a seed fixes the result for a given batch size. The transformer
prior keeps a KV cache (one cell per step, nothing recomputed); the PixelCNN
recomputes only the band of rows that can reach the current cell.
"""

from __future__ import annotations

import math
import secrets
from contextlib import nullcontext

import torch
from torch import Tensor

from oasisvq.device import amp_dtype, cpu_threads
from oasisvq.errors import ConfigError
from oasisvq.prior.base import DEFAULT_OPTIONS, Cond, Prior, SamplingOptions, check_guidance
from oasisvq.prior.base import make_cond as make_cond
from oasisvq.prior.config import CONDITIONS, SEXES, PriorConfig

# {"class": name or index, "position": [0, 1], "age": years, "sex": "F"/"M" or 0/1}
Conditions = dict[str, object]
SMALL_BATCH = 32  # grids drawn at once on one CPU thread (see device.cpu_threads)


def default_batch_size(cfg: PriorConfig) -> int:
    """Grids drawn at once: 1024 for 8x8 grids, 128 for 32x32 (a KV cache of ~130 MB
    for the transformer; larger batches gain little once attention dominates)."""
    return int(min(1024, max(16, 2**17 // max(1, cfg.cells))))


def resolve_conditions(
    cfg: PriorConfig, wanted: Conditions | None
) -> dict[str, float | int | None]:
    """Check requested conditions against what the prior was trained on.

    ``wanted["class"]``: a class name of the training data (or its index); ``"sex"``:
    F or M (any case) or 0/1. Returns ``{"class": index or None, "position": ...,
    "age": ..., "sex": 0, 1 or None}``; None means unknown (the marginal over that
    condition)."""
    wanted = {k: v for k, v in (wanted or {}).items() if v is not None}
    if unknown := sorted(set(wanted) - set(CONDITIONS)):
        raise ConfigError(
            f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}"
        )
    for key in wanted:
        if key not in cfg.condition:
            raise ConfigError(
                f"prior {cfg.name!r} is not conditioned on {key} (train one with --condition {key})"
            )
    out: dict[str, float | int | None] = dict.fromkeys(CONDITIONS)
    if "class" in wanted:
        out["class"] = _class_index(cfg, wanted["class"])
    if "position" in wanted:
        pos = float(wanted["position"])  # type: ignore[arg-type]
        if not 0.0 <= pos <= 1.0:
            raise ConfigError(f"--position {pos}: expected a normalised slice position in [0, 1]")
        out["position"] = pos
    if "age" in wanted:
        age = float(wanted["age"])  # type: ignore[arg-type]
        if not (math.isfinite(age) and 0 <= age <= 150):
            raise ConfigError(f"--age {age}: expected years in [0, 150]")
        out["age"] = age
    if "sex" in wanted:
        out["sex"] = _sex_index(wanted["sex"])
    return out


def _sex_index(value: object) -> int:
    text = str(value).strip().upper()
    if text in SEXES:
        return SEXES.index(text)
    if text in ("0", "1"):
        return int(text)
    raise ConfigError(f"--sex {value}: expected F or M")


def _class_index(cfg: PriorConfig, value: object) -> int:
    names = list(cfg.class_names)
    if str(value) in names:
        return names.index(str(value))
    if isinstance(value, int) or str(value).isdigit():
        if not 0 <= int(value) < len(names):  # type: ignore[arg-type]
            raise ConfigError(f"--class {value}: class index outside [0, {len(names)})")
        return int(value)  # type: ignore[arg-type]
    raise ConfigError(f"--class {value}: unknown class; classes: {', '.join(names)}")


def condition_batch(cfg: PriorConfig, wanted: Conditions | None, n: int) -> Cond | None:
    """The per-example conditions of ``n`` draws (None for an unconditional prior)."""
    c = resolve_conditions(cfg, wanted)
    if not cfg.condition:
        return None
    return make_cond(n, c["class"], c["position"], c["age"], sex=c["sex"])


def drawing_precision(prior: Prior, precision: str, device: torch.device):
    """The autocast context a prior draws in (see ``sample_codes``): bf16 for a masked
    prior when ``precision`` is "bf16", or "auto" where bf16 is native; else none."""
    dtype = amp_dtype("off" if precision == "fp32" else precision, device)
    if prior.likelihood == "exact" or dtype != torch.bfloat16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def sample_codes(
    prior: Prior, n: int, cond: Cond | None = None, options: SamplingOptions = DEFAULT_OPTIONS
) -> Tensor:
    """``n`` code grids ``(n, *grid)`` int64 on the CPU, drawn ``options.batch_size`` at a
    time; a batch of at most ``SMALL_BATCH`` grids is drawn on one CPU thread.

    Precision: a masked prior's network runs at ``options.precision`` (bf16 where it is
    native: its parallel steps are large matrix products; ``benchmarks/sampling_speed.py``
    times both); autoregressive priors stay in fp32 (their one-cell steps are too small
    to gain).
    Logits are turned into probabilities in fp32 either way.

    cond: per-example conditions of length ``n`` (see :mod:`oasisvq.prior.base`); each
    guided grid (``options.guidance`` other than 1) costs two."""
    if n < 0:
        raise ConfigError(f"--n {n}: expected a whole number >= 0")
    check_guidance(prior.cfg, options.guidance)  # also when n = 0
    device = next(prior.parameters()).device
    bs = options.batch_size or default_batch_size(prior.cfg)
    seed = secrets.randbits(62) if options.seed is None else int(options.seed)
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for s in range(0, n, bs):
        m = min(bs, n - s)
        c = None if cond is None else {k: v[s : s + m].to(device) for k, v in cond.items()}
        with (
            cpu_threads(1 if m <= SMALL_BATCH else torch.get_num_threads(), device),
            drawing_precision(prior, options.precision, device),
        ):
            out.append(prior.sample(m, c, options, gen).cpu())
    return torch.cat(out) if out else torch.zeros(0, *prior.cfg.grid, dtype=torch.long)
