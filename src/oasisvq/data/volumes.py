"""3D MRI volumes (NIfTI ``.nii``/``.nii.gz``, Analyze ``.hdr``/``.img``) cut into 2D slices.

* :func:`read_volume` decodes one file to a ``float32`` 3D array plus its affine.
* :func:`slice_volume` finds the requested anatomical axis from the affine, normalises
  the intensities of the whole volume robustly and returns the slices that contain brain
  as ``uint8`` squares, always in the same display orientation.
* :func:`load_volume_tree` reads every volume under a folder, pairs optional brain
  masks, reads ages/splits from ``participants.csv`` and splits by subject.

Finding, pairing and splitting (:func:`find_volume_files`, :func:`read_each`) are
shared with :mod:`oasisvq.data.volumes3d`, which keeps each volume whole.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import nibabel as nib
import numpy as np

from oasisvq.data.images import to_square
from oasisvq.data.slices import SPLIT_NAMES, SliceSet, Splits
from oasisvq.errors import ConfigError, DataError

if TYPE_CHECKING:
    from oasisvq.data.options import DataOptions

AXES = ("axial", "coronal", "sagittal")
_AXIS_CODES = {"axial": ("S", "I"), "coronal": ("A", "P"), "sagittal": ("L", "R")}
_RAS_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

#: normalised intensity above which a voxel counts as foreground when there is no mask
FOREGROUND_LEVEL = 0.1
#: a slice is kept when its brain area is at least this fraction of the largest slice's
MIN_AREA = 0.05

# File-name / folder-name tokens marking a mask or segmentation rather than an image.
MASK_TOKENS = frozenset(
    {
        "seg",
        "fseg",
        "dseg",
        "aseg",
        "probseg",
        "pve",
        "mask",
        "masks",
        "brainmask",
        "dlmuse",
        "label",
        "labels",
        "segmentation",
        "segmentations",
        "segs",
    }
)
_TOKEN_SPLIT = re.compile(r"[_\-.]")

_OASIS_SESSION = re.compile(r"(OAS\d_\d{4})_MR\d+")
_IXI_SUBJECT = re.compile(r"IXI\d{3}-[A-Za-z]+-\d+")
_BIDS_SUBJECT = re.compile(r"(sub-[A-Za-z0-9]+)(_ses-[A-Za-z0-9]+)?")

# Within one OASIS session, prefer the most processed image (earlier = preferred).
_OASIS_PREFERENCE = ("_masked_gfc", "_t88_gfc", "_sbj_111")

T = TypeVar("T")

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "validation": "validate",
    "val": "validate",
    "valid": "validate",
    "test": "test",
    "testing": "test",
}


# ----------------------------------------------------------------------------- file names


def volume_stem(path: Path) -> str | None:
    """File name without its volume suffix, or None if ``path`` is not a volume file."""
    name = path.name
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".hdr", ".img"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _tokens(name: str) -> set[str]:
    return {t.lower() for t in _TOKEN_SPLIT.split(name) if t}


def is_mask_file(path: Path, root: Path | None = None) -> bool:
    """True for segmentations/masks: ``*_seg``, ``*_fseg``, ``*_mask``, ``*_DLMUSE`` ...,
    or any file below a folder such as ``seg/``, ``masks/``, ``FSL_SEG/`` (below ``root``)."""
    stem = volume_stem(path) or path.name
    if _tokens(stem) & MASK_TOKENS:
        return True
    parents = path.parent.relative_to(root).parts if root is not None else path.parent.parts
    return any(_tokens(part) & MASK_TOKENS for part in parents)


def subject_id(path: Path) -> str:
    """Subject of a volume file: ``OAS1_0001_MR1_...`` -> ``OAS1_0001``,
    ``IXI013-HH-1212_T1`` -> ``IXI013-HH-1212``, ``sub-01_T1w`` -> ``sub-01``, else the stem."""
    stem = volume_stem(path) or path.stem
    if m := _OASIS_SESSION.search(stem):
        return m.group(1)
    if m := _IXI_SUBJECT.search(stem):
        return m.group(0)
    if m := _BIDS_SUBJECT.search(stem):
        return m.group(1)
    return stem


def oasis_session(path: Path) -> str | None:
    """OASIS session of a volume file (``OAS1_0001_MR1_...`` -> ``OAS1_0001_MR1``), or None."""
    m = _OASIS_SESSION.search(volume_stem(path) or path.name)
    return m.group(0) if m else None


def _scan_key(path: Path) -> str:
    """Key identifying one scan (session), used to pair a volume with its mask."""
    stem = volume_stem(path) or path.stem
    if m := _OASIS_SESSION.search(stem):
        return m.group(0)
    if m := _IXI_SUBJECT.search(stem):
        return m.group(0)
    if m := _BIDS_SUBJECT.search(stem):
        return m.group(0)
    return _strip_mask_tokens(stem)


def _strip_mask_tokens(stem: str) -> str:
    return "_".join(t for t in stem.split("_") if t.lower() not in MASK_TOKENS)


# ----------------------------------------------------------------------------- reading


def _check_analyze_pair(path: Path) -> tuple[Path, Path]:
    hdr, img = path.with_suffix(".hdr"), path.with_suffix(".img")
    if not hdr.is_file():
        raise DataError(path, f"Analyze image has no header file {hdr.name}")
    if not img.is_file():
        raise DataError(path, f"Analyze header has no image file {img.name}")
    return hdr, img


def _check_analyze_size(header: nib.analyze.AnalyzeHeader, img: Path) -> None:
    shape = header.get_data_shape()
    expected = (
        int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    )
    actual = img.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "larger than expected"
        raise DataError(
            img, f"{actual} bytes but its header expects {expected} for shape {shape} ({state})"
        )


def _shape3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise DataError(path, f"expected a 3D volume, got shape {tuple(shape)}")
    return dims[0], dims[1], dims[2]


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI/Analyze volume. Returns ``(float32 (X, Y, Z) array, (4, 4) affine)``.

    Header scaling is applied. A trailing singleton 4th dimension is squeezed. Raises
    :class:`DataError` naming the file when it is unreadable or truncated, when an
    Analyze ``.hdr``/``.img`` pair is incomplete or disagrees in size, when the data
    is not 3D, or when it holds NaN/inf values.
    """
    path = Path(path)
    if volume_stem(path) is None:
        raise DataError(path, "not a NIfTI (.nii/.nii.gz) or Analyze (.hdr/.img) file")
    if not path.is_file():
        raise DataError(path, "no such file")
    analyze = path.suffix.lower() in (".hdr", ".img")
    if analyze:
        _, img_file = _check_analyze_pair(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise DataError(path, f"unreadable volume ({type(exc).__name__}: {exc})") from exc
    if analyze:
        _check_analyze_size(img.header, img_file)
    shape = _shape3d(img.shape, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise DataError(
            path, f"unreadable or truncated volume data ({type(exc).__name__}: {exc})"
        ) from exc
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(path, f"{bad} NaN/inf voxel values")
    return data, np.asarray(img.affine, np.float64)


# ----------------------------------------------------------------------------- slicing


def voxel_axis(affine: np.ndarray, axis: str, name: str = "volume") -> int:
    """Index of the voxel axis that runs along ``axis`` (axial: S/I, coronal: A/P,
    sagittal: L/R), found with :func:`nibabel.aff2axcodes`."""
    if axis not in AXES:
        raise ConfigError(f"axis={axis!r}: expected one of {AXES}")
    codes = nib.aff2axcodes(affine)
    for i, code in enumerate(codes):
        if code in _AXIS_CODES[axis]:
            return i
    raise DataError(name, f"affine has no voxel axis runs {axis} (orientation codes {codes})")


def _to_ras_slices(vol: np.ndarray, affine: np.ndarray, axis: str) -> np.ndarray:
    """Reorient to RAS and return ``(n, H, W)`` display slices along ``axis``.

    Display convention (same for every input orientation): of the two in-plane RAS
    axes, the first runs left -> right across columns and the second bottom -> top,
    so axial slices show anterior up and the subject's right on the image right,
    coronal and sagittal slices show superior up (sagittal: anterior on the right).
    Slices are ordered along increasing R/A/S.
    """
    ras = nib.orientations.apply_orientation(vol, nib.orientations.io_orientation(affine))
    stack = np.moveaxis(ras, _RAS_AXIS[axis], 0)
    return stack.transpose(0, 2, 1)[:, ::-1, :]


def normalise_intensity(
    vol: np.ndarray, foreground: np.ndarray, name: str = "volume"
) -> np.ndarray:
    """Scale so that the 0.5th..99.5th percentiles inside ``foreground`` map to 0..1,
    clip to ``[0, 1]`` and zero everything outside ``foreground``. Returns float32."""
    if not foreground.any():
        raise DataError(name, "volume has no foreground (all zero or empty mask)")
    lo, hi = np.percentile(vol[foreground], [0.5, 99.5])
    if not hi > lo:
        raise DataError(name, f"constant intensity {lo:g} inside the brain; nothing to normalise")
    out = np.clip((vol - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)
    out[~foreground] = 0.0
    return out


def slice_volume(
    vol: np.ndarray,
    affine: np.ndarray,
    axis: str = "axial",
    mask: np.ndarray | None = None,
    size: int = 128,
    fit: str = "resize",
    *,
    min_area: float = MIN_AREA,
    name: str = "volume",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a 3D volume into normalised 2D slices along an anatomical axis.

    ``vol``: ``(X, Y, Z)`` float array; ``affine``: ``(4, 4)`` voxel-to-world; ``mask``:
    optional ``(X, Y, Z)`` array, voxels ``> 0`` are brain (outside voxels become 0).
    Intensities are normalised per volume (:func:`normalise_intensity`, within the mask
    or the nonzero voxels). Only slices whose brain area (mask voxels, or voxels above
    :data:`FOREGROUND_LEVEL` after normalisation) is at least ``min_area`` times the
    largest slice's are kept.

    Returns ``images (n, size, size) uint8``, ``positions (n,) float32`` (0 at the first
    kept slice, 1 at the last, along increasing R/A/S) and ``indices (n,) int64`` (the
    slice index along the *original* voxel axis, see :func:`voxel_axis`).
    """
    vol = np.asarray(vol)
    if vol.ndim != 3:
        raise DataError(name, f"expected a 3D volume, got shape {vol.shape}")
    if mask is not None and np.shape(mask) != vol.shape:
        raise DataError(name, f"mask shape {np.shape(mask)} differs from volume shape {vol.shape}")
    src_axis = voxel_axis(affine, axis, name)
    brain = np.asarray(mask) > 0 if mask is not None else vol != 0
    norm = normalise_intensity(vol.astype(np.float32, copy=False), brain, name)
    slices = _to_ras_slices(norm, affine, axis)
    fg = _to_ras_slices(brain, affine, axis) if mask is not None else slices > FOREGROUND_LEVEL
    area = fg.sum(axis=(1, 2))
    keep = np.flatnonzero((area > 0) & (area >= min_area * area.max()))
    if keep.size == 0:
        raise DataError(name, "no slice contains brain")
    images = np.stack([to_square(slices[r], size, fit) for r in keep])
    span = max(int(keep[-1] - keep[0]), 1)
    positions = ((keep - keep[0]) / span).astype(np.float32)
    n = vol.shape[src_axis]
    flipped = nib.orientations.io_orientation(affine)[src_axis, 1] < 0
    indices = (n - 1 - keep if flipped else keep).astype(np.int64)
    return images, positions, indices


# ----------------------------------------------------------------------------- finding files


def _volume_files(root: Path) -> Iterator[Path]:
    """Every volume under ``root``; an Analyze pair is listed once (by its ``.img``; an
    orphan ``.hdr`` is listed so that reading it reports the missing ``.img``)."""
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if not path.is_file() or volume_stem(path) is None:
            continue
        if path.suffix.lower() == ".hdr" and path.with_suffix(".img").is_file():
            continue
        yield path


def has_volumes(root: Path) -> bool:
    """True if ``root`` holds at least one NIfTI/Analyze file (at any depth)."""
    return next(_volume_files(Path(root)), None) is not None


def _prefer_processed(paths: list[Path]) -> list[Path]:
    """Within one OASIS session (``OAS1_0001_MR1``) keep only the most processed image
    (``*_masked_gfc`` over ``*_t88_gfc`` over ``*_sbj_111`` over raw ``mpr-N``):
    the OASIS-1 release ships several copies of each brain."""
    groups: dict[str, list[Path]] = {}
    for p in paths:
        m = _OASIS_SESSION.search(p.name)
        groups.setdefault(m.group(0) if m else str(p), []).append(p)

    def rank(p: Path) -> int:
        stem = (volume_stem(p) or p.name).lower()
        return next(
            (i for i, s in enumerate(_OASIS_PREFERENCE) if s in stem), len(_OASIS_PREFERENCE)
        )

    out: list[Path] = []
    for group in groups.values():
        best = min(rank(p) for p in group)
        out += [p for p in group if rank(p) == best]
    return sorted(out)


def find_volumes(root: Path, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Split the volumes under ``root`` into images and masks/segmentations.

    Files below ``exclude`` (an explicit mask folder) are masks too."""
    images: list[Path] = []
    masks: list[Path] = []
    for path in _volume_files(root):
        below = exclude is not None and path.is_relative_to(exclude)
        (masks if below or is_mask_file(path, root) else images).append(path)
    return _prefer_processed(images), masks


def _mask_rank(path: Path) -> tuple[int, str]:
    return (0 if _tokens(volume_stem(path) or "") & {"mask", "brainmask"} else 1, str(path))


def pair_masks(images: list[Path], masks: list[Path]) -> dict[Path, Path]:
    """Pair each image with a mask: first by identical name once the mask tokens are
    removed (``X_seg`` <-> ``X``), then by scan id (OASIS session, IXI/BIDS subject)."""
    by_stem: dict[str, list[Path]] = {}
    by_key: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(_strip_mask_tokens(volume_stem(m) or m.stem), []).append(m)
        by_key.setdefault(_scan_key(m), []).append(m)
    out: dict[Path, Path] = {}
    for img in images:
        found = by_stem.get(volume_stem(img) or img.stem) or by_key.get(_scan_key(img))
        if found:
            out[img] = min(found, key=_mask_rank)
    return out


def mask_folder(root: Path, mask: str | None) -> Path | None:
    """The explicit mask folder of ``opts.mask`` (a path, or relative to ``root``), or
    None for no masks and ``"auto"``."""
    if mask is None or mask == "auto":
        return None
    path = Path(mask).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    if not path.is_dir():
        raise DataError(path, "mask folder does not exist")
    return path.resolve()


# ----------------------------------------------------------------------------- participants


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


FEMALE, MALE, UNKNOWN_SEX = 0, 1, -1
_SEXES = {"f": FEMALE, "female": FEMALE, "m": MALE, "male": MALE}


class Participant(NamedTuple):
    """One row of ``participants.csv``: age in years (NaN = unknown), split (None = not
    given) and sex (:data:`FEMALE`, :data:`MALE` or :data:`UNKNOWN_SEX`)."""

    age: float
    split: str | None
    sex: int = UNKNOWN_SEX


def parse_sex(text: str | None) -> int:
    """``F``/``female`` -> 0, ``M``/``male`` -> 1 (any case), anything else -> -1."""
    return _SEXES.get((text or "").strip().lower(), UNKNOWN_SEX)


def parse_age(text: str | None, path: Path, where: str) -> float:
    """Age in years from a table cell; empty/NA -> NaN, anything else not a number is a
    :class:`DataError` naming ``path`` and ``where`` (the line or row)."""
    text = (text or "").strip()
    if text.lower() in ("", "na", "n/a", "nan"):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(path, f"{where}: age {text!r} is not a number") from None


def read_participant_table(path: Path) -> dict[str, Participant]:
    """Read ``participants.csv`` (columns ``subject``, optionally ``age``, ``sex`` and
    ``split``). Returns ``{subject: Participant}``."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DataError(path, "empty participants file")
    subj = _column(rows[0], ("subject", "participant_id", "subject_id"))
    if subj is None:
        raise DataError(path, f"no 'subject' column (header: {rows[0]})")
    age, split = _column(rows[0], ("age",)), _column(rows[0], ("split",))
    sex = _column(rows[0], ("sex", "gender", "m/f"))
    out: dict[str, Participant] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or subj >= len(row) or not row[subj].strip():
            continue
        out[row[subj].strip()] = Participant(
            _age(row, age, path, line), _split(row, split, path, line), parse_sex(_cell(row, sex))
        )
    return out


def read_participants(path: Path) -> dict[str, tuple[float, str | None]]:
    """Read ``participants.csv`` (columns ``subject``, ``age`` and optionally ``split``).

    Returns ``{subject: (age or NaN, split or None)}``."""
    return {s: (p.age, p.split) for s, p in read_participant_table(path).items()}


def _cell(row: list[str], col: int | None) -> str:
    return row[col] if col is not None and col < len(row) else ""


def _age(row: list[str], col: int | None, path: Path, line: int) -> float:
    return parse_age(_cell(row, col), path, f"line {line}")


def _split(row: list[str], col: int | None, path: Path, line: int) -> str | None:
    if col is None:
        return None
    text = row[col].strip().lower() if col < len(row) else ""
    if text not in _SPLIT_ALIASES:
        raise DataError(path, f"line {line}: split {text!r} is not one of train/validate/test")
    return _SPLIT_ALIASES[text]


# ----------------------------------------------------------------------------- splitting


def split_subjects(
    subjects: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Assign subjects (never slices) to train/validate/test, deterministically.

    Subjects are sorted, shuffled with ``seed`` and cut by ``fractions``; with at least
    three subjects every split with a positive fraction gets at least one."""
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(
            f"split_fractions={fractions}: expected three fractions >= 0 summing to 1"
        )
    order = sorted(set(subjects))
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    n = len(order)
    n_val, n_test = (int(round(n * x)) for x in f[1:])
    if n >= 3:
        n_val, n_test = max(n_val, int(f[1] > 0)), max(n_test, int(f[2] > 0))
    n_val, n_test = min(n_val, n), min(n_test, n - min(n_val, n))
    counts = {"validate": n_val, "test": n_test}
    out: dict[str, str] = {}
    start = 0
    for name in ("validate", "test"):
        out.update({s: name for s in order[start : start + counts[name]]})
        start += counts[name]
    out.update({s: "train" for s in order[start:]})
    return out


# ----------------------------------------------------------------------------- tree


@dataclass
class VolumeFiles:
    """The volumes under a data root and what goes with each (see :func:`find_volume_files`).

    images:     image files, masks/segmentations excluded, OASIS copies reduced to one
    masks:      ``{image: mask file}`` for the images that have one
    mask_dir:   the explicit mask folder (every image must then have a mask), or None
    table:      ``{subject: Participant}`` from ``participants.csv`` (``{}`` without one)
    table_path: where ``participants.csv`` is (or would be)
    splits:     ``{image: split}``: images of a subject without a split are left out
    skipped:    ``{split: ["path: reason", ...]}``; key :data:`NO_SPLIT` for images left out
    """

    root: Path
    images: list[Path]
    masks: dict[Path, Path]
    mask_dir: Path | None
    table: dict[str, Participant]
    table_path: Path
    splits: dict[Path, str]
    skipped: dict[str, list[str]]


def find_volume_files(root: Path, opts: DataOptions) -> VolumeFiles:
    """Find the images under ``root``, pair their masks and split them by subject.

    Masks/segmentations are never images. ``opts.mask``: None (no masks), ``"auto"``
    (pair masks found under ``root`` when present) or a folder of masks (every volume
    must then have one). Splits come from the ``split`` column of
    ``root/participants.csv`` when there is one, otherwise from
    ``opts.split_fractions``/``opts.split_seed`` applied to subjects."""
    root = Path(root).resolve()
    mask_dir = mask_folder(root, opts.mask)
    images, masks = find_volumes(root, exclude=mask_dir)
    if not images:
        raise DataError(root, "no NIfTI/Analyze volumes found (masks/segmentations are not images)")
    if mask_dir is not None:
        masks = list(_volume_files(mask_dir))
    pairs = pair_masks(images, masks) if opts.mask is not None else {}
    table_path = root / "participants.csv"
    table = read_participant_table(table_path) if table_path.is_file() else {}
    splits, skipped = _assign(images, table, table_path, opts)
    return VolumeFiles(root, images, pairs, mask_dir, table, table_path, splits, skipped)


def read_each(
    files: VolumeFiles, opts: DataOptions, read: Callable[[Path, Path | None], T]
) -> dict[str, list[T]]:
    """``read(image, mask or None)`` for every image that has a split, grouped by split
    (in file order). A :class:`DataError` stops, or with ``opts.skip_bad`` is added to
    ``files.skipped`` under the image's split."""
    parts: dict[str, list[T]] = {s: [] for s in SPLIT_NAMES}
    for path in files.images:
        split = files.splits.get(path)
        if split is None:
            continue
        try:
            if files.mask_dir is not None and path not in files.masks:
                raise DataError(path, f"no mask for this volume in {files.mask_dir}")
            parts[split].append(read(path, files.masks.get(path)))
        except DataError as exc:
            if not opts.skip_bad:
                raise
            files.skipped.setdefault(split, []).append(str(exc))
    return parts


def check_skipped(root: Path, counts: dict[str, int], skipped: dict[str, list[str]]) -> None:
    """Refuse a result with no volume at all, or a split that only skipped files emptied
    (``counts``: volumes read per split)."""
    if not any(counts.values()):
        raise DataError(root, "no readable volumes (all skipped)" + _first(skipped))
    for name in SPLIT_NAMES:
        if not counts.get(name) and skipped.get(name):
            raise DataError(
                root,
                f"split '{name}' would be empty: all its {len(skipped[name])} volume(s) were "
                f"skipped{_first({name: skipped[name]})}",
            )


def load_volume_tree(root: Path, opts: DataOptions) -> Splits:
    """Read every volume below ``root`` into slice splits (see the module docstring and
    :func:`find_volume_files` for masks and splits)."""
    if opts.axis not in AXES:
        raise ConfigError(f"axis={opts.axis!r}: expected one of {AXES}")
    files = find_volume_files(root, opts)
    parts = read_each(files, opts, lambda path, mask: _read_one(path, mask, files.table, opts))
    return _build_splits(files.root, parts, files.skipped)


NO_SPLIT = ""  # key of the skipped lines of subjects that have no split


def _assign(
    images: list[Path], table: dict[str, Participant], table_path: Path, opts: DataOptions
) -> tuple[dict[Path, str], dict[str, list[str]]]:
    """Split of each volume, plus skipped lines for subjects the split column lacks."""
    subjects = {p: subject_id(p) for p in images}
    skipped: dict[str, list[str]] = {}
    if any(p.split is not None for p in table.values()):
        out: dict[Path, str] = {}
        for path, subj in subjects.items():
            if subj in table:
                out[path] = table[subj].split
                continue
            exc = DataError(path, f"subject {subj!r} has no row in {table_path}")
            if not opts.skip_bad:
                raise exc
            skipped.setdefault(NO_SPLIT, []).append(str(exc))
        return out, skipped
    by_subject = split_subjects(list(subjects.values()), opts.split_fractions, opts.split_seed)
    return {p: by_subject[s] for p, s in subjects.items()}, skipped


def _read_one(
    path: Path, mask_path: Path | None, table: dict[str, Participant], opts: DataOptions
) -> tuple:
    vol, affine = read_volume(path)
    mask = None
    if mask_path is not None:
        mask, mask_affine = read_volume(mask_path)
        if mask.shape != vol.shape:
            raise DataError(
                mask_path, f"mask shape {mask.shape} differs from volume {path.name} {vol.shape}"
            )
        if not np.allclose(mask_affine, affine, atol=1e-2):
            raise DataError(mask_path, f"mask affine differs from the affine of {path.name}")
    images, positions, indices = slice_volume(
        vol, affine, opts.axis, mask, opts.size, opts.fit, name=str(path)
    )
    subj = subject_id(path)
    age = table[subj].age if subj in table else float("nan")
    return images, positions, [f"{path}#{k}" for k in indices], subj, age


def _build_splits(
    root: Path, parts: dict[str, list[tuple]], skipped: dict[str, list[str]]
) -> Splits:
    splits: Splits = {}
    for name in SPLIT_NAMES:
        items = parts[name]
        if not items:
            continue
        splits[name] = SliceSet(
            images=np.concatenate([it[0] for it in items]),
            subjects=[it[3] for it in items for _ in range(len(it[0]))],
            sources=[s for it in items for s in it[2]],
            positions=np.concatenate([it[1] for it in items]).astype(np.float32),
            ages=np.concatenate([np.full(len(it[0]), it[4], np.float32) for it in items]),
            skipped=list(skipped.get(name, [])),
        )
    check_skipped(root, {n: len(parts[n]) for n in SPLIT_NAMES}, skipped)
    # subjects without a split (no row in participants.csv) are listed with the first split
    next(iter(splits.values())).skipped.extend(skipped.get(NO_SPLIT, []))
    return splits


def _first(skipped: dict[str, list[str]]) -> str:
    lines = [line for v in skipped.values() for line in v]
    return f"; first: {lines[0]}" if lines else ""
