"""What the Studio asks of a run of whole volumes, in plain functions over numpy.

Volumes are ``(X, Y, Z)`` float32 in ``[0, 1]`` in RAS voxel order (x left -> right,
y posterior -> anterior, z inferior -> superior); code grids ``(gx, gy, gz)``. On the page
each volume is three orthogonal slices through its centre (:func:`views`); a ZIP carries
the sampled volumes as NIfTI on the preset's voxel grid, as ``oasisvq sample`` writes them.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from oasisvq import metrics
from oasisvq.data.nifti import write_nifti
from oasisvq.data.volumes3d import VolumeSet, grid_affine, prepare_volume
from oasisvq.errors import ConfigError, DataError, OasisError
from oasisvq.evaluate.volume_samples import nearest_volumes
from oasisvq.figures import orthogonal_slices
from oasisvq.io import atomic_write
from oasisvq.studio.backend import Samples, Studio, sample, volume_header

MAX_VOLUMES = 8  # about a second each on one CPU thread at 12x14x12 codes
GAP = 2  # pixels between the views


def views(volume: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` -> ``(max(Z, Y), Y + 2X + 2 GAP)`` float32: the sagittal, coronal and
    axial slices through the centre side by side, oriented as
    :func:`oasisvq.figures.orthogonal_slices` draws them, each padded at the bottom to
    one height."""
    panels = orthogonal_slices(volume)
    height = max(p.shape[0] for p in panels)
    out = np.zeros((height, sum(p.shape[1] for p in panels) + GAP * 2), np.float32)
    col = 0
    for p in panels:
        out[: p.shape[0], col : col + p.shape[1]] = p
        col += p.shape[1] + GAP
    return out


def sample_volumes(
    st: Studio,
    n: int,
    prior: str | None,
    conditions: dict | None,
    guidance: float,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    texture: bool = False,
) -> Samples:
    """``n`` (1 to ``MAX_VOLUMES``) new volumes ``(n, X, Y, Z)`` from ``prior`` at
    ``conditions`` (``age`` in years, ``sex`` "F" or "M"); the same seed gives the same.
    texture: draw the run's scan texture onto them."""
    if not 1 <= n <= MAX_VOLUMES:
        raise ConfigError(f"{n} volumes: ask for 1 to {MAX_VOLUMES}")
    return sample(st, n, prior, conditions, guidance, temperature, top_k, seed, texture)


def export_nifti_zip(st: Studio, samples: Samples, path: str | Path) -> Path:
    """Write ``samples`` as a ZIP: ``volumes/sample_NNN.nii.gz`` (affine: the preset's
    voxel grid centred on the origin), ``codes.npy`` ``(n, gx, gy, gz)`` int16 and
    ``settings.json``."""
    affine = grid_affine(tuple(samples.images.shape[1:]), st.model.config.voxel_mm)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(tmp, "w") as z:
            for i, volume in enumerate(samples.images):
                name = f"sample_{i:03d}.nii.gz"
                z.write(
                    write_nifti(Path(folder) / name, volume, affine, "aligned"), f"volumes/{name}"
                )
            codes = Path(folder) / "codes.npy"
            np.save(codes, samples.codes.astype(np.int16))
            z.write(codes, "codes.npy")
            z.writestr("settings.json", json.dumps(samples.settings, indent=2))

    return atomic_write(path, write)


def nearest_training(st: Studio, volume: np.ndarray) -> tuple[int, float, np.ndarray, str]:
    """The training volume most like ``volume (X, Y, Z)`` by SSIM-3D, found as
    ``evaluate-samples`` finds it (:func:`oasisvq.evaluate.volume_samples.nearest_volumes`):
    its index, the SSIM, the volume in [0, 1] and its subject's label."""
    train = _split(st, "train")
    idx, score = nearest_volumes(np.asarray(volume, np.float32)[None], train.volumes)
    i = int(idx[0])
    found = np.asarray(train.volumes[i], np.float32) / 255.0
    return i, float(score[0]), found, _label(train, i)


def volume_splits(st: Studio) -> dict[str, VolumeSet]:
    """The run's splits of volumes (decoded once, memory-mapped); {} when the data is gone."""

    def load() -> dict[str, VolumeSet]:
        try:
            return dict(st.model.splits(st.data_root))
        except OasisError:
            return {}

    return st.cached("volume splits", load)


def _split(st: Studio, split: str) -> VolumeSet:
    found = volume_splits(st)
    if split not in found:
        raise DataError(f"no {split!r} split in the run's data ({st.data_root})")
    return found[split]


def subjects(st: Studio, split: str) -> list[str]:
    """The subjects of ``split`` with their age and sex, as the page lists them."""
    data = _split(st, split)
    return [_label(data, i) for i in range(len(data.subjects))]


def _label(data: VolumeSet, i: int) -> str:
    """``subject [age y] [F|M]``, leaving out what is unknown."""
    age, sex = data.ages[i], int(data.sexes[i])
    known = [f"{age:.0f} y" if np.isfinite(age) else "", {0: "F", 1: "M"}.get(sex, "")]
    return " ".join([data.subjects[i], *filter(None, known)])


def reconstruct_subject(st: Studio, split: str, index: int) -> dict:
    """Subject ``index`` of ``split`` through the quantizer (see :func:`reconstruct`)."""
    data = _split(st, split)
    if not 0 <= index < len(data.volumes):
        raise ConfigError(f"subject {index}: {split} has {len(data.volumes)} volumes")
    label = f"{_label(data, index)} ({split})"
    return reconstruct(st, data.volumes[index], data.affines[index], label)


def reconstruct_upload(
    st: Studio, path: str | Path, name: str, mask: tuple[str | Path, str] | None = None
) -> dict:
    """An uploaded scan (NIfTI, or the ``.hdr`` of an Analyze pair), prepared as ``oasisvq
    reconstruct`` prepares one (canonical orientation, the preset's voxels and shape,
    intensity scaling, and the brain mask ``mask = (path, name)`` when given), through
    the quantizer. Headers are read first:
    a file of more than ``MAX_UPLOAD_VOXELS`` is refused."""
    _check_header(path, name)
    if mask is not None:
        _check_header(*mask)
    try:
        volume, _, affine = prepare_volume(path, None if mask is None else mask[0], st.options)
    except DataError as exc:
        named = mask[1] if mask is not None and exc.path == str(mask[0]) else name
        raise DataError(named, exc.reason) from None
    label = name if mask is None else f"{name} (brain mask {mask[1]})"
    return reconstruct(st, volume, affine, label)


def _check_header(path: str | Path, name: str) -> None:
    shape = volume_header(path, name)
    if len(shape) < 3:
        raise DataError(name, f"volume of shape {shape}: expected 3D")


def reconstruct(st: Studio, volume: np.ndarray, affine: np.ndarray, label: str) -> dict:
    """``volume (X, Y, Z)`` uint8 through the quantizer: ``original`` and
    ``reconstruction`` ``(X, Y, Z)`` float32 in [0, 1], ``codes (gx, gy, gz)``, SSIM-3D,
    PSNR, and the ``affine`` and ``label`` it came with."""
    original = torch.from_numpy(np.asarray(volume, np.float32) / 255.0)
    codes = st.model.encode(original[None])  # (1, gx, gy, gz)
    recon = st.model.decode(codes).clamp(0, 1)  # (1, X, Y, Z)
    x, y = original[None, None], recon[:, None]  # (1, 1, X, Y, Z)
    return {
        "original": original.numpy(),
        "reconstruction": recon[0].numpy(),
        "codes": codes[0].numpy(),
        "ssim": float(metrics.ssim3d(x, y)[0]),
        "psnr": float(metrics.psnr(x, y)[0]),
        "affine": np.asarray(affine, np.float64),
        "label": label,
    }


def write_reconstruction(r: dict, path: str | Path) -> Path:
    """The reconstruction of :func:`reconstruct` as NIfTI, with the affine that overlays
    the source scan (as ``oasisvq reconstruct`` writes ``<stem>_recon.nii.gz``)."""
    return write_nifti(path, r["reconstruction"], r["affine"])
