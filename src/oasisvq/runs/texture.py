"""A run's scan texture on disk: ``RUN/texture.safetensors`` (its tensors) and
``RUN/texture.json`` (scale, the decoder checkpoint it was fitted for, what the fit
measured). Read without pickle and checked against the run before use."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors.torch import save as dump_safetensors

from oasisvq.errors import ConfigError, RunError
from oasisvq.io import atomic_write, read_json, write_json
from oasisvq.model.texture import BINS, Texture, spectrum_shape
from oasisvq.runs.checkpoint import read_safetensors

TENSORS, INFO = "texture.safetensors", "texture.json"


def write_texture(run_dir: Path, texture: Texture, info: dict) -> Path:
    """Write ``texture`` and ``info`` (with ``scale``) into ``run_dir``; returns the JSON."""
    tensors = {"std": texture.std.contiguous(), "amplitude": texture.amplitude.contiguous()}
    atomic_write(run_dir / TENSORS, lambda p: p.write_bytes(dump_safetensors(tensors)))
    return write_json(
        run_dir / INFO, {**info, "shape": list(texture.shape), "scale": texture.scale}
    )


def read_texture(run_dir: Path, shape: tuple[int, ...], vqvae: str) -> Texture:
    """The texture of the run at ``run_dir``, checked to fit images of ``shape`` and the
    decoder checkpoint ``vqvae`` (its fingerprint)."""
    info_path = run_dir / INFO
    if not info_path.is_file():
        raise ConfigError(f"{run_dir}: no texture fitted; run `oasisvq fit-texture {run_dir}`")
    info = read_json(info_path, "texture settings")
    tensors = read_safetensors(run_dir / TENSORS, "texture")
    scale = info.get("scale") if isinstance(info, dict) else None
    std, amplitude = tensors.get("std"), tensors.get("amplitude")
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise RunError(f"{info_path}: scale {scale!r} is not a number >= 0")
    if std is None or amplitude is None or tuple(std.shape) != (BINS,):
        raise RunError(f"{run_dir / TENSORS}: not a texture this tool wrote")
    if not (std.isfinite().all() and amplitude.isfinite().all()):
        raise RunError(f"{run_dir / TENSORS}: the texture holds non-finite values")
    fitted = tuple(info.get("shape") or ())
    if fitted != tuple(shape) or tuple(amplitude.shape) != spectrum_shape(fitted):
        raise RunError(f"{run_dir / TENSORS}: not a texture for images of {tuple(shape)}")
    texture = Texture(fitted, std.float(), amplitude.float(), float(scale))
    if info.get("vqvae") != vqvae:
        raise ConfigError(
            f"{run_dir}: the texture was fitted for another decoder checkpoint; "
            f"run `oasisvq fit-texture {run_dir} --force`"
        )
    return texture
