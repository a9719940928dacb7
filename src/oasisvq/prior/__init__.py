"""Priors over VQ-VAE code grids: the report's PixelCNN, a transformer and a masked prior (MaskGIT); training and loading."""

from oasisvq.prior.registry import PRIORS, PriorConfig, build_prior, get_prior_config

__all__ = ["PRIORS", "PriorConfig", "build_prior", "get_prior_config"]
