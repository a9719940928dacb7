"""Writing volumes as NIfTI-1 files that other tools (FSL, ITK-SNAP, nilearn) open."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from oasisvq.errors import ConfigError
from oasisvq.io import atomic_write

_CODES = {"scanner": 1, "aligned": 2, "talairach": 3, "mni": 4}


def write_nifti(
    path: Path | str, volume: np.ndarray, affine: np.ndarray, code: str = "scanner"
) -> Path:
    """Write an ``(X, Y, Z)`` volume to ``path`` (``.nii.gz`` or ``.nii``), atomically.

    ``volume``: ``uint8`` (0..255 meaning [0, 1], stored as ``uint8`` with a 1/255
    scale so readers see [0, 1]) or floats in [0, 1] (stored as ``float32``, clipped to
    [0, 1]). ``affine``: ``(4, 4)`` voxel -> world mm, written as both the qform and the
    sform with ``code`` (``"scanner"`` for a volume on a source scan's grid,
    ``"aligned"`` for one on :func:`~oasisvq.data.volumes3d.grid_affine`); units mm.
    Raises :class:`ConfigError` for a wrong suffix, shape, affine or NaN values."""
    path = Path(path)
    gz = path.name.lower().endswith(".nii.gz")
    if not (gz or path.name.lower().endswith(".nii")):
        raise ConfigError(f"{path}: expected a .nii.gz or .nii file name")
    img = _image(np.asarray(volume), np.asarray(affine, np.float64), path, code)
    data = img.to_bytes()
    if gz:
        data = gzip.compress(data, compresslevel=6, mtime=0)  # same volume, same bytes
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _image(volume: np.ndarray, affine: np.ndarray, path: Path, code: str) -> nib.Nifti1Image:
    if volume.ndim != 3:
        raise ConfigError(f"{path}: expected an (X, Y, Z) volume, got shape {volume.shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ConfigError(f"{path}: expected a finite (4, 4) affine, got shape {affine.shape}")
    if code not in _CODES:
        raise ConfigError(f"{path}: code {code!r}: expected one of {', '.join(_CODES)}")
    if volume.dtype == np.uint8:
        img = nib.Nifti1Image(volume, affine)
        img.header.set_slope_inter(1 / 255, 0.0)
    else:
        values = volume.astype(np.float32)
        if not np.isfinite(values).all():
            raise ConfigError(f"{path}: volume holds NaN/inf values")
        img = nib.Nifti1Image(np.clip(values, 0.0, 1.0), affine)
    img.set_qform(affine, code=_CODES[code])
    img.set_sform(affine, code=_CODES[code])
    img.header.set_xyzt_units("mm")
    return img
