"""Draw new code grids from a run's prior and decode them with its VQ-VAE.

Sampling is batched; a seed fixes the result for a given batch size. The
transformer prior keeps a KV cache (one cell per step, nothing recomputed); the
PixelCNN recomputes only the band of rows that can reach the current cell.
"""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from oasisvq.errors import ConfigError
from oasisvq.prior.base import Cond, Prior, check_guidance, make_cond
from oasisvq.prior.registry import PriorConfig

if TYPE_CHECKING:
    from oasisvq.api import VQModel


def default_batch_size(cfg: PriorConfig) -> int:
    """Grids drawn at once: 1024 for 8x8 grids, 128 for 32x32 (a KV cache of ~130 MB
    for the transformer; larger batches gain little once attention dominates)."""
    return int(min(1024, max(16, 2**17 // max(1, cfg.cells))))


def resolve_condition(
    cfg: PriorConfig,
    class_name: str | int | None = None,
    slice_pos: float | None = None,
    age: float | None = None,
) -> dict[str, float | int | None]:
    """Check the requested conditions against what the prior was trained on.

    class_name: a class name of the training data (or its index). Returns
    ``{"cls": index or None, "pos": ..., "age": ...}``; None means unknown (marginal)."""
    out: dict[str, float | int | None] = {"cls": None, "pos": None, "age": None}
    if class_name is not None:
        if "class" not in cfg.condition:
            raise ConfigError(
                f"prior {cfg.name!r} is not conditioned on class (train one with --condition class)"
            )
        names = list(cfg.class_names)
        if str(class_name) in names:
            out["cls"] = names.index(str(class_name))
        elif isinstance(class_name, int) or str(class_name).isdigit():
            out["cls"] = int(class_name)
            if not 0 <= out["cls"] < len(names):
                raise ConfigError(f"class index {class_name} outside [0, {len(names)})")
        else:
            raise ConfigError(f"unknown class {class_name!r}; classes: {', '.join(names)}")
    if slice_pos is not None:
        if "position" not in cfg.condition:
            raise ConfigError(
                f"prior {cfg.name!r} is not conditioned on slice position (--condition position)"
            )
        if not 0.0 <= float(slice_pos) <= 1.0:
            raise ConfigError(
                f"slice position {slice_pos} outside [0, 1] (normalised position in the volume)"
            )
        out["pos"] = float(slice_pos)
    if age is not None:
        if "age" not in cfg.condition:
            raise ConfigError(f"prior {cfg.name!r} is not conditioned on age (--condition age)")
        out["age"] = float(age)
    return out


def _autocast(precision: str, device: torch.device):
    """Decoding precision: "fp32", "bf16", or "auto" (bf16 where the device has native
    bfloat16, e.g. CPUs with AVX512-BF16/AMX and recent GPUs; fp32 elsewhere)."""
    if precision == "auto":
        from oasisvq.train.distributed import amp_dtype

        precision = "bf16" if amp_dtype("auto", device) == torch.bfloat16 else "fp32"
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"precision {precision!r}: expected auto, fp32 or bf16")


@torch.no_grad()
def sample_codes(
    prior: Prior,
    n: int,
    cond: Cond | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    guidance: float = 1.0,
) -> Tensor:
    """``n`` code grids ``(n, h, w)`` int64 on the CPU, drawn ``batch_size`` at a time, in
    fp32 (the probabilities are exact; bf16 does not make the KV-cached steps faster).

    cond: per-example conditions of length ``n`` (see :mod:`oasisvq.prior.base`).
    guidance: classifier-free guidance scale of a conditional prior (1 = none; see
    :func:`oasisvq.prior.base.guide`); each guided grid costs two."""
    check_guidance(prior.cfg, guidance)  # also when n = 0
    device = next(prior.parameters()).device
    bs = batch_size or default_batch_size(prior.cfg)
    gen = torch.Generator(device).manual_seed(secrets.randbits(62) if seed is None else int(seed))
    out = []
    for s in range(0, n, bs):
        m = min(bs, n - s)
        c = None if cond is None else {k: v[s : s + m].to(device) for k, v in cond.items()}
        out.append(prior.sample(m, c, temperature, top_k, gen, guidance).cpu())
    return torch.cat(out) if out else torch.zeros(0, *prior.cfg.grid, dtype=torch.long)


@torch.no_grad()
def decode_codes(
    model: VQModel, codes: Tensor, batch_size: int = 128, precision: str = "fp32"
) -> Tensor:
    """Codes ``(n, h, w)`` -> images ``(n, S, S)`` float32 in [0, 1] on the CPU.

    precision: "fp32", "bf16" or "auto" (bf16 where native: twice as fast on such CPUs,
    pixel values within about 2/255 of fp32)."""
    out = []
    with _autocast(precision, model.device):
        for s in range(0, len(codes), batch_size):
            out.append(model.decode(codes[s : s + batch_size]).float().cpu())
    size = model.config.image_size
    return torch.cat(out) if out else torch.zeros(0, size, size)


def get_prior(model: VQModel, prior: str | None = None) -> Prior:
    """The run's prior ``prior`` (default: the only / most recent one), loaded once per model."""
    from oasisvq.prior.run import load_prior, resolve_prior_name

    if model.run_dir is None:
        raise ConfigError("this model has no run directory, so no prior to sample from")
    name = resolve_prior_name(model.run_dir, prior)
    cache: dict[str, Prior] = model.__dict__.setdefault("_priors", {})
    if name not in cache:
        cache[name] = load_prior(model.run_dir, name, model.device)[0]
    return cache[name]


def sample_images(
    model: VQModel,
    n: int,
    prior: str | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    class_name: str | int | None = None,
    slice_pos: float | None = None,
    age: float | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    guidance: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``n`` new images from the run's prior, decoded by its VQ-VAE.

    Returns ``images (n, S, S)`` float32 in [0, 1] and ``codes (n, h, w)`` int64 (CPU).
    ``class_name`` / ``slice_pos`` / ``age`` condition a prior trained with them
    (unset: the marginal); ``guidance`` above 1 leans the samples further towards them
    (classifier-free guidance; see ``sample_codes``). Codes are drawn in fp32;
    ``precision`` is the decoder's
    ("auto": bf16 where the device has native bfloat16, else fp32; see ``decode_codes``).
    """
    if n < 0:
        raise ValueError(f"n={n}: expected n >= 0")
    p = get_prior(model, prior)
    c = resolve_condition(p.cfg, class_name, slice_pos, age)
    cond = make_cond(n, c["cls"], c["pos"], c["age"]) if p.cfg.condition else None
    codes = sample_codes(p, n, cond, temperature, top_k, seed, batch_size, guidance)
    return decode_codes(model, codes, precision=precision), codes


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """``(n, S, S)`` float in [0, 1] -> uint8 0..255."""
    x = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
