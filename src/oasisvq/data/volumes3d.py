"""Whole 3D MRI volumes on one common grid, for 3D models.

Each NIfTI/Analyze volume under a data root (found, paired with its mask and split
by subject exactly as :mod:`oasisvq.data.volumes` does for slices) is prepared by
:func:`prepare_volume`:

1. read (:func:`~oasisvq.data.volumes.read_volume`) and reoriented to RAS+ with
   :func:`nibabel.as_closest_canonical`;
2. resampled to ``opts.voxel_mm`` isotropic voxels with :mod:`nibabel.processing`
   (linear for the image; the mask nearest-neighbour onto the same grid), keeping the
   field of view: 1 mm -> 2 mm halves the shape;
3. masked: voxels outside the paired mask (label > 0 is brain) become 0; without a
   mask the brain is the foreground above
   :data:`~oasisvq.data.volumes.FOREGROUND_LEVEL`, as for slices;
4. scaled: the 0.5th..99.5th intensity percentiles inside the brain map to 0..1;
5. cropped or zero-padded to ``opts.volume_shape``, centred on the brain's bounding
   box, and stored as ``uint8``.

The affine of each output volume is exact (voxel -> scanner mm), so a
reconstruction written with it (:func:`oasisvq.data.nifti.write_nifti`) overlays the
source scan. :func:`load_volumes` caches the prepared arrays like the slice loader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from oasisvq.data import volumes
from oasisvq.data.cache import cache_dir, cached_folder, fingerprint
from oasisvq.data.options import DataOptions
from oasisvq.data.prepare import find_clinical_table, read_clinical_table
from oasisvq.data.slices import SPLIT_NAMES, SliceSet
from oasisvq.data.volumes import (
    FOREGROUND_LEVEL,
    NO_SPLIT,
    UNKNOWN_SEX,
    Participant,
    VolumeFiles,
    normalise_intensity,
    read_volume,
)
from oasisvq.errors import ConfigError, DataError
from oasisvq.io import dumps

CACHE_VERSION = 1  # bump when reading, resampling, masking, cropping or scaling changes
#: refuse resampled grids larger than this (a typo such as --voxel-mm 0.02 would
#: otherwise allocate tens of GiB before failing)
MAX_GRID_VOXELS = 2**27
_ARRAYS = ("volumes", "masks", "affines", "ages", "sexes", "masked", "extents")


@dataclass
class VolumeSet:
    """One split of whole volumes, all on the same output grid.

    volumes:  ``(N, X, Y, Z) uint8``, 0..255 meaning [0, 1]; RAS+ axes (x left->right,
              y posterior->anterior, z inferior->superior); may be a read-only memory map
    masks:    ``(N, X, Y, Z) bool`` brain masks (all True where no mask file was found)
    affines:  ``(N, 4, 4) float64``: voxel -> scanner mm of each output volume
    subjects: subject id per volume (splits never share a subject)
    ages:     ``(N,) float32`` years, NaN = unknown
    sexes:    ``(N,) int8``: 0 female, 1 male, -1 unknown
    paths:    source file of each volume
    voxel_mm: isotropic voxel size of the grid
    masked:   ``(N,) bool``: True where a mask file was applied
    extents:  ``(N, 3) int16``: size of the brain's bounding box in voxels before the
              crop/pad (larger than the shape = brain cut), -1 = unknown
    skipped:  ``"path: reason"`` of the files skipped (``skip_bad``)
    """

    volumes: np.ndarray
    masks: np.ndarray
    affines: np.ndarray
    subjects: list[str]
    ages: np.ndarray
    sexes: np.ndarray
    paths: list[str]
    voxel_mm: float
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    extents: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int16))
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.volumes)
        if len(self.masked) == 0 and n:
            self.masked = ~np.asarray(self.masks).reshape(n, -1).all(axis=1)
        if len(self.extents) == 0 and n:
            self.extents = np.full((n, 3), -1, np.int16)
        for name in ("masks", "affines", "subjects", "ages", "sexes", "paths", "masked", "extents"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"VolumeSet.{name} has {len(getattr(self, name))} entries for {n} volumes"
                )
        if np.shape(self.masks) != np.shape(self.volumes):
            raise ValueError(
                f"VolumeSet.masks shape {np.shape(self.masks)} differs from volumes "
                f"{np.shape(self.volumes)}"
            )

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)`` of every volume."""
        x, y, z = self.volumes.shape[1:]
        return int(x), int(y), int(z)

    def subset(self, index: np.ndarray) -> VolumeSet:
        """The volumes at ``index``, in that order, read into memory."""
        index = np.asarray(index, np.int64)
        return VolumeSet(
            volumes=np.asarray(self.volumes[index]),
            masks=np.asarray(self.masks[index]),
            affines=np.asarray(self.affines[index]),
            subjects=[self.subjects[i] for i in index],
            ages=np.asarray(self.ages[index]),
            sexes=np.asarray(self.sexes[index]),
            paths=[self.paths[i] for i in index],
            voxel_mm=self.voxel_mm,
            masked=np.asarray(self.masked[index]),
            extents=np.asarray(self.extents[index]),
        )

    def to_unit(self, i: int) -> np.ndarray:
        """Volume ``i`` as ``(X, Y, Z) float32`` in [0, 1]."""
        return np.asarray(self.volumes[i], np.float32) / np.float32(255)

    @classmethod
    def empty(cls, shape: tuple[int, int, int], voxel_mm: float) -> VolumeSet:
        """A split with no volume (its arrays have ``N = 0``)."""
        return cls(
            volumes=np.zeros((0, *shape), np.uint8),
            masks=np.zeros((0, *shape), bool),
            affines=np.zeros((0, 4, 4)),
            subjects=[],
            ages=np.zeros(0, np.float32),
            sexes=np.zeros(0, np.int8),
            paths=[],
            voxel_mm=voxel_mm,
        )


@dataclass
class Prepared:
    """One volume on the output grid (see :func:`prepare_volume`), plus what the
    summary of a data set reports: whether a mask was applied, the brain's extent."""

    volume: np.ndarray  # (X, Y, Z) uint8
    mask: np.ndarray  # (X, Y, Z) bool
    affine: np.ndarray  # (4, 4) float64
    masked: bool
    extent: tuple[int, int, int]


# ----------------------------------------------------------------------------- grids


def split_arrays(data: SliceSet | VolumeSet) -> np.ndarray:
    """A split's images ``(N, S, S)`` or volumes ``(N, X, Y, Z)``, uint8."""
    return data.volumes if isinstance(data, VolumeSet) else data.images


def grid_affine(shape: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    """``(4, 4)`` RAS affine of a ``shape`` volume of ``voxel_mm`` voxels whose centre
    (voxel ``(shape - 1) / 2``) is the world origin: for volumes with no source scan."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray(shape, np.float64) - 1) / 2
    return affine


def resampled_grid(
    shape: tuple[int, ...], affine: np.ndarray, voxel_mm: float, name: str = "volume"
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The ``voxel_mm`` grid covering the field of view of a ``shape``/``affine`` volume.

    Its axes run along the volume's own (so an oblique scan is not rotated, and a
    canonical one stays canonical); each side keeps its length in mm, rounded to whole
    voxels, and the first voxel sits half a new voxel inside the old field of view.
    Returns ``(shape, affine)``."""
    affine = np.asarray(affine, np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    scale = voxel_mm / sizes
    new_shape = tuple(
        max(1, int(round(n * s))) for n, s in zip(shape, sizes / voxel_mm, strict=True)
    )
    if int(np.prod(new_shape, dtype=np.int64)) > MAX_GRID_VOXELS:
        raise ConfigError(
            f"voxel_mm={voxel_mm:g}: {name} would become a {'x'.join(map(str, new_shape))} "
            "grid; choose larger voxels"
        )
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1) / 2  # old voxel edge -0.5 -> new first centre at +scale/2
    return (new_shape[0], new_shape[1], new_shape[2]), affine @ step


def crop_or_pad(
    array: np.ndarray, start: np.ndarray, shape: tuple[int, int, int], fill: object = 0
) -> np.ndarray:
    """``out[i] = array[start + i]`` for ``i`` in ``shape``; ``fill`` outside ``array``."""
    out = np.full(shape, fill, array.dtype)
    src, dst = [], []
    for n, s, size in zip(array.shape, start, shape, strict=True):
        lo, hi = max(int(s), 0), min(int(s) + size, n)
        if hi <= lo:  # no overlap along this axis
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _centred_start(brain: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Start of the ``shape`` window centred on ``brain``'s bounding box, and the box size.

    The margins before and after the box differ by at most one voxel (negative
    margins, a crop into the brain, are shared alike)."""
    idx = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    lo = np.array([i[0] for i in idx])
    extent = np.array([i[-1] for i in idx]) - lo + 1
    return lo - (np.asarray(shape) - extent) // 2, extent


# ----------------------------------------------------------------------------- one volume


def _canonical(data: np.ndarray, affine: np.ndarray, path: Path) -> nib.Nifti1Image:
    """``data`` reoriented to RAS+ (axes permuted and flipped, never interpolated)."""
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "header gives no usable voxel-to-world affine (zero voxel size?)")
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _resample(
    img: nib.Nifti1Image, grid: tuple[tuple[int, int, int], np.ndarray], order: int
) -> np.ndarray:
    shape, affine = grid
    if img.shape == shape and np.allclose(img.affine, affine, atol=1e-6):
        return np.asarray(img.dataobj)  # already on the grid (e.g. 2 mm data at 2 mm)
    out = resample_from_to(img, grid, order=order, mode="constant", cval=0.0)
    return np.asarray(out.dataobj)


def _mask_on_grid(
    mask_path: Path, grid: tuple[tuple[int, int, int], np.ndarray], image: Path
) -> np.ndarray:
    """The mask file (label > 0 is brain) nearest-neighbour resampled onto ``grid``."""
    labels, affine = read_volume(mask_path)
    brain = _canonical((labels > 0).astype(np.uint8), affine, mask_path)
    mask = _resample(brain, grid, order=0) > 0
    if not mask.any():
        raise DataError(mask_path, f"mask has no brain voxel (label > 0) inside {image.name}")
    return mask


def _prepare(path: Path, mask_path: Path | None, opts: DataOptions) -> Prepared:
    """:func:`prepare_volume`, plus whether a mask was applied and the brain's extent."""
    path, name = Path(path), str(path)
    img = _canonical(*read_volume(path), path)
    grid = resampled_grid(img.shape, img.affine, opts.voxel_mm, name)
    vol = _resample(img, grid, order=1).astype(np.float32, copy=False)
    if mask_path is not None:
        mask = _mask_on_grid(Path(mask_path), grid, path)
        scaled = normalise_intensity(vol, mask, name)  # zero outside the mask
        brain = mask
    else:
        mask = np.ones(vol.shape, bool)
        scaled = normalise_intensity(vol, vol != 0, name)
        brain = scaled > FOREGROUND_LEVEL
        if not brain.any():
            raise DataError(path, "volume has no foreground above the background level")
    start, extent = _centred_start(brain, opts.volume_shape)
    volume = crop_or_pad(np.rint(scaled * 255).astype(np.uint8), start, opts.volume_shape)
    offset = np.eye(4)
    offset[:3, 3] = start
    return Prepared(
        volume=volume,
        mask=crop_or_pad(mask, start, opts.volume_shape, fill=mask_path is None),
        affine=grid[1] @ offset,
        masked=mask_path is not None,
        extent=(int(extent[0]), int(extent[1]), int(extent[2])),
    )


def prepare_volume(
    path: Path | str, mask_path: Path | str | None, opts: DataOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One volume file (and optional mask file) on the output grid (module docstring).

    Returns ``volume (X, Y, Z) uint8`` (0..255 = [0, 1], RAS+), ``mask (X, Y, Z) bool``
    (all True without a mask file) and its ``(4, 4)`` voxel -> scanner mm affine, with
    ``(X, Y, Z) = opts.volume_shape``. Raises :class:`DataError` naming the file for
    an unreadable, empty or constant volume or an empty mask."""
    p = _prepare(Path(path), None if mask_path is None else Path(mask_path), opts)
    return p.volume, p.mask, p.affine


# ----------------------------------------------------------------------------- subjects


def _clinical(root: Path) -> dict[str, Participant]:
    """Age and sex by OASIS session from ``oasis_cross-sectional.csv`` under ``root``."""
    path = find_clinical_table(root)
    if path is None:
        return {}
    return {
        session: Participant(
            volumes.parse_age(row["age"], path, session), None, volumes.parse_sex(row["sex"])
        )
        for session, row in read_clinical_table(path).items()
    }


def _about(path: Path, files: VolumeFiles, clinical: dict[str, Participant]) -> Participant:
    """Age and sex of a volume: ``participants.csv`` first, then the clinical table."""
    nan = float("nan")
    row = files.table.get(volumes.subject_id(path), Participant(nan, None))
    extra = clinical.get(volumes.oasis_session(path) or "", Participant(nan, None))
    age = row.age if np.isfinite(row.age) else extra.age
    sex = row.sex if row.sex != UNKNOWN_SEX else extra.sex
    return Participant(age, row.split, sex)


# ----------------------------------------------------------------------------- all volumes


def _read_all(root: Path, opts: DataOptions) -> dict[str, VolumeSet]:
    files = volumes.find_volume_files(root, opts)
    clinical = _clinical(files.root)
    parts = volumes.read_each(files, opts, lambda p, m: (p, _prepare(p, m, opts)))
    volumes.check_skipped(files.root, {n: len(parts[n]) for n in SPLIT_NAMES}, files.skipped)
    out = {}
    for name in SPLIT_NAMES:
        items = parts[name]
        if not items:
            out[name] = VolumeSet.empty(opts.volume_shape, opts.voxel_mm)
        else:
            about = [_about(p, files, clinical) for p, _ in items]
            out[name] = VolumeSet(
                volumes=np.stack([v.volume for _, v in items]),
                masks=np.stack([v.mask for _, v in items]),
                affines=np.stack([v.affine for _, v in items]),
                subjects=[volumes.subject_id(p) for p, _ in items],
                ages=np.array([a.age for a in about], np.float32),
                sexes=np.array([a.sex for a in about], np.int8),
                paths=[str(p) for p, _ in items],
                voxel_mm=opts.voxel_mm,
                masked=np.array([v.masked for _, v in items], bool),
                extents=np.array([v.extent for _, v in items], np.int16),
            )
        out[name].skipped = list(files.skipped.get(name, []))
    # volumes of subjects without a split (no row in participants.csv) are listed with train
    out["train"].skipped.extend(files.skipped.get(NO_SPLIT, []))
    return out


def _cache_key(root: Path, opts: DataOptions) -> str:
    # the 2D-only options (size, fit, axis) do not change whole volumes
    used = {k: v for k, v in opts.to_dict().items() if k not in ("size", "fit", "axis", "dims")}
    mask_dir = volumes.mask_folder(root, opts.mask)
    h = hashlib.sha256(
        json.dumps([CACHE_VERSION, "volumes3d", str(root), str(mask_dir), used]).encode()
    )
    fingerprint(h, root)
    if mask_dir is not None and not mask_dir.is_relative_to(root):
        fingerprint(h, mask_dir)
    return h.hexdigest()[:20]


def _save(tmp: Path, sets: dict[str, VolumeSet]) -> None:
    meta = {}
    for name, s in sets.items():
        for array in _ARRAYS:
            np.save(tmp / f"{name}.{array}.npy", np.ascontiguousarray(getattr(s, array)))
        meta[name] = {"n": len(s), "subjects": s.subjects, "paths": s.paths, "skipped": s.skipped}
    meta["voxel_mm"] = next(iter(sets.values())).voxel_mm
    (tmp / "meta.json").write_text(dumps(meta))


def _load_cached(folder: Path, opts: DataOptions) -> dict[str, VolumeSet]:
    meta = json.loads((folder / "meta.json").read_text())
    out = {}
    for name in SPLIT_NAMES:
        m = meta[name]
        if m["n"] == 0:  # a zero-length array cannot be memory-mapped
            out[name] = VolumeSet.empty(opts.volume_shape, meta["voxel_mm"])
        else:
            arrays = {
                a: np.load(folder / f"{name}.{a}.npy", mmap_mode="r", allow_pickle=False)
                for a in _ARRAYS
            }
            out[name] = VolumeSet(
                subjects=m["subjects"], paths=m["paths"], voxel_mm=meta["voxel_mm"], **arrays
            )
        out[name].skipped = m["skipped"]
    return out


def load_volumes(
    root: Path | str, opts: DataOptions | None = None, cache: bool = True
) -> dict[str, VolumeSet]:
    """Every volume under ``root`` prepared as whole volumes, split by subject.

    Returns ``{"train", "validate", "test"}`` -> :class:`VolumeSet` (a split without
    volumes is empty). Masks, splits and ``skip_bad`` work as for slices
    (:func:`oasisvq.data.volumes.find_volume_files`); ages and sexes come from
    ``participants.csv`` (columns ``subject``, ``age``, ``sex``) and, for OASIS-1, from
    the clinical table ``oasis_cross-sectional.csv`` (``ID``, ``M/F``, ``Age``). The
    prepared arrays are cached as ``.npy`` files (no pickles) keyed by the options and
    by the size and modification time of every file under ``root``."""
    opts = opts or DataOptions(dims=3)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(root, "no such folder" if not root.exists() else "expected a data folder")
    if not cache:
        return _read_all(root, opts)
    folder = cache_dir() / _cache_key(root, opts)
    cached_folder(folder, lambda tmp: _save(tmp, _read_all(root, opts)))
    return _load_cached(folder, opts)
