"""OASISVQ: discrete codes of brain MRI with a VQ-VAE, and new brains from a learned prior.

Two lines load a trained run::

    model = oasisvq.load("runs/compact")
    codes = model.encode(images)          # (N, S, S) in [0, 1] -> (N, h, w) int64
"""

from oasisvq.api import VQModel, load

__all__ = ["VQModel", "load"]
__version__ = "0.1.0"
