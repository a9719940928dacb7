"""``build_prior``: the network for a prior configuration (see :mod:`oasisvq.prior.config`)."""

from __future__ import annotations

from oasisvq.errors import ConfigError
from oasisvq.prior.base import Prior
from oasisvq.prior.config import CONDITIONS, PRIORS, PriorConfig, get_prior_config, parse_condition
from oasisvq.prior.maskgit import MaskGITPrior
from oasisvq.prior.pixelcnn import PixelCNN
from oasisvq.prior.transformer import TransformerPrior

ARCHS: dict[str, type[Prior]] = {
    "pixelcnn": PixelCNN,
    "transformer": TransformerPrior,
    "maskgit": MaskGITPrior,
}


def build_prior(cfg: PriorConfig) -> Prior:
    """The prior network for a config whose ``codebook_size`` and ``grid`` are set."""
    if cfg.codebook_size < 2 or min(cfg.grid) < 1:
        raise ConfigError(f"prior {cfg.name!r}: codebook_size and grid must be set before building")
    if cfg.arch not in ARCHS:
        raise ConfigError(
            f"prior {cfg.name!r}: unknown arch {cfg.arch!r}; known: {', '.join(ARCHS)}"
        )
    return ARCHS[cfg.arch](cfg)


__all__ = [
    "CONDITIONS",
    "PRIORS",
    "PriorConfig",
    "build_prior",
    "get_prior_config",
    "parse_condition",
]
