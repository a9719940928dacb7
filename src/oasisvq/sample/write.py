"""Write samples: ``OUT/images/sample_*.png``, ``OUT/codes.npy``, ``OUT/samples.png`` and
``OUT/sample.json`` (the settings used, as drawn). Volumes of a 3D run go to
``OUT/volumes/sample_*.nii.gz`` (NIfTI on the preset's voxel grid, RAS, centred on the
origin) with ``sample_*.png`` beside each (three orthogonal views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from oasisvq.data.nifti import write_nifti
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes3d import grid_affine
from oasisvq.errors import ConfigError
from oasisvq.figures import samples_figure, volume_views
from oasisvq.io import atomic_write, fresh_output_dir, write_json
from oasisvq.prior.base import DEFAULT_OPTIONS, SamplingOptions, check_guidance
from oasisvq.prior.sampling import Conditions, resolve_conditions
from oasisvq.runs import Run

MARKER = "sample.json"


def sample_to_folder(
    run: Run,
    n: int,
    out: str | Path,
    prior: str | None = None,
    options: SamplingOptions = DEFAULT_OPTIONS,
    conditions: Conditions | None = None,
    force: bool = False,
) -> dict:
    """Draw ``n`` samples from ``run``'s prior and write them to ``out``; returns the
    settings written to ``sample.json``. ``out`` must be new or empty, or an earlier
    sample folder replaced with ``force``: checked before anything is drawn."""
    if n < 1:
        raise ConfigError(f"--n {n}: expected a whole number >= 1")
    name = run.prior_name(prior)
    cfg = run.prior(name).cfg  # what was asked is checked against the prior before any output
    resolve_conditions(cfg, conditions)
    check_guidance(cfg, options.guidance)
    if options.texture:
        run.texture()
    out = fresh_output_dir(out, force, MARKER)
    images, codes = run.sample(n, name, options, conditions)
    info = {
        "run": str(run.path),
        "prior": name,
        "n": n,
        **options.to_dict(),
        **_condition_keys(conditions or {}),
    }
    if run.dims == 3:
        return write_volumes(out, images, codes, info, run.config.voxel_mm)
    return write_samples(out, images, codes, info, run.config.quantizer.codebook_size)


def write_volumes(out: Path, volumes: Tensor, codes: Tensor, info: dict, voxel_mm: float) -> dict:
    """Write ``volumes (n, X, Y, Z)`` in [0, 1] as NIfTI (affine: ``grid_affine``) with
    an orthogonal-view PNG each, and their code grids ``(n, gx, gy, gz)``, with ``info``
    into ``out``; returns ``info`` with the paths added."""
    folder = out / "volumes"
    folder.mkdir(parents=True, exist_ok=True)
    affine = grid_affine(tuple(volumes.shape[1:]), voxel_mm)
    width = max(4, len(str(len(volumes) - 1)))
    for i, volume in enumerate(volumes.numpy()):
        stem = folder / f"sample_{i:0{width}d}"
        write_nifti(stem.with_suffix(".nii.gz"), volume, affine, code="aligned")
        volume_views(volume, stem.with_suffix(".png"), title=stem.name)
    _write_codes(out, codes)
    info = {
        **info,
        "volumes": str(folder),
        "codes": str(out / "codes.npy"),
        "voxel_mm": voxel_mm,
        "affine": affine.tolist(),
    }
    write_json(out / MARKER, info)
    return info


def _write_codes(out: Path, codes: Tensor) -> None:
    dtype = np.int16 if codes.numel() == 0 or codes.max() < 2**15 else np.int64
    atomic_write(
        out / "codes.npy", lambda tmp: np.save(tmp.open("wb"), codes.numpy().astype(dtype))
    )


def write_samples(out: Path, images: Tensor, codes: Tensor, info: dict, n_codes: int) -> dict:
    """Write ``images (n, S, S)`` in [0, 1] and ``codes (n, h, w)`` with ``info`` into
    ``out``; returns ``info`` with the paths added."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    width = max(4, len(str(len(pixels) - 1)))
    for i, img in enumerate(pixels):
        path = out / "images" / f"sample_{i:0{width}d}.png"
        atomic_write(path, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
    _write_codes(out, codes)
    samples_figure(images, codes, out / "samples.png", n=min(len(pixels), 64), n_codes=n_codes)
    info = {
        **info,
        "images": str(out / "images"),
        "codes": str(out / "codes.npy"),
        "figure": str(out / "samples.png"),
    }
    write_json(out / MARKER, info)
    return info


def _condition_keys(conditions: Conditions) -> dict:
    """The requested conditions as ``sample.json`` keys (``slice_pos``: the earlier name
    of ``position``, kept for scripts that read it)."""
    position = conditions.get("position")
    return {
        "class": conditions.get("class"),
        "position": position,
        "slice_pos": position,
        "age": conditions.get("age"),
        "sex": conditions.get("sex"),
    }
