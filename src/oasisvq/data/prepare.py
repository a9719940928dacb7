"""Turning extracted OASIS-1 sessions into a ready slice dataset (the OASIS PNG layout).

``prepare_oasis1(src, out)`` reads, for each subject, the atlas-registered,
skull-stripped image of its first session
(``OAS1_xxxx_MRy/PROCESSED/MPRAGE/T88_111/*_t88_masked_gfc.img``) and its FSL
tissue segmentation (``OAS1_xxxx_MRy/FSL_SEG/*_fseg.img``), cuts both into the
same axial slices and writes::

    out/keras_png_slices_{train,validate,test}/case_<subject>_slice_<k>.nii.png
    out/keras_png_slices_seg_{train,validate,test}/seg_<subject>_slice_<k>.nii.png
    out/labels.csv      subject, session, split, age, sex, mmse, cdr
    out/prepare.json    the options and counts, for provenance

``<subject>`` is the 4-digit OASIS subject number (``OAS1_0042`` -> ``0042``) and
``k`` counts the kept slices from inferior to superior. Segmentation PNGs hold the
FSL FAST labels times 85 (0 background, 85 CSF, 170 grey matter, 255 white
matter), as in the OASIS PNG release. Subjects, never slices, are split.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm import tqdm

from oasisvq.data.images import to_square
from oasisvq.data.slices import SPLIT_NAMES
from oasisvq.data.volumes import (
    _to_ras_slices,  # the display orientation slice_volume uses, applied to the labels
    read_volume,
    slice_volume,
    split_subjects,
    voxel_axis,
)
from oasisvq.errors import ConfigError, DataError
from oasisvq.io import dumps

IMAGE_GLOB = "PROCESSED/MPRAGE/T88_111/*_t88_masked_gfc.img"
SEG_GLOB = "FSL_SEG/*_fseg.img"
CLINICAL_TABLE = "oasis_cross-sectional.csv"
LABEL_COLUMNS = ("subject", "session", "split", "age", "sex", "mmse", "cdr")
SEG_SCALE = 85  # FSL FAST labels 0..3 -> 0, 85, 170, 255
_SESSION = re.compile(r"OAS1_(\d{4})_MR(\d+)")


@dataclass
class Session:
    """One OASIS-1 imaging session found on disk."""

    session: str  # OAS1_0001_MR1
    subject: str  # 0001
    visit: int  # 1 for MR1
    image: Path
    seg: Path | None
    clinical: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- finding sessions


def find_sessions(src: Path) -> tuple[list[Session], list[str]]:
    """The first session of every subject under ``src``, and notes on sessions left out."""
    found: dict[str, list[Session]] = {}
    for image in sorted(src.glob(f"**/{IMAGE_GLOB}")):
        if any(part.startswith(".") for part in image.relative_to(src).parts):
            continue  # unfinished extractions and other hidden folders
        session = _session_of(image)
        if session is not None:
            found.setdefault(session.subject, []).append(session)
    if not found:
        raise DataError(
            src,
            f"no OASIS-1 sessions found (expected OAS1_xxxx_MRy/{IMAGE_GLOB}); "
            "run 'oasisvq download oasis1' first",
        )
    sessions, notes = [], []
    for subject in sorted(found):
        first, *rest = sorted(found[subject], key=lambda s: (s.visit, str(s.image)))
        sessions.append(first)
        notes += [
            f"{s.session}: repeat session of subject {subject}, only {first.session} is used"
            for s in rest
        ]
    return sessions, notes


def _session_of(image: Path) -> Session | None:
    session_dir = image.parents[3]
    match = _SESSION.fullmatch(session_dir.name) or _SESSION.match(image.name)
    if match is None:
        return None
    segs = sorted((session_dir / "FSL_SEG").glob("*_fseg.img"))
    return Session(
        session=match.group(0),
        subject=match.group(1),
        visit=int(match.group(2)),
        image=image,
        seg=segs[0] if segs else None,
    )


# --------------------------------------------------------------------------- clinical table


def find_clinical_table(src: Path) -> Path | None:
    """``oasis_cross-sectional.csv`` in ``src`` (or below it), if downloaded."""
    direct = src / CLINICAL_TABLE
    if direct.is_file():
        return direct
    return next((p for p in sorted(src.rglob(CLINICAL_TABLE)) if p.is_file()), None)


def read_clinical_table(path: Path) -> dict[str, dict[str, str]]:
    """Rows of the OASIS-1 clinical table by session id: ``{"OAS1_0001_MR1": {age, sex, mmse, cdr}}``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"unreadable clinical table ({exc})") from exc
    columns = {name.strip().lower(): name for name in header if name}
    if "id" not in columns:
        raise DataError(path, f"no 'ID' column (header: {', '.join(header) or 'none'})")
    pick = {"age": "age", "sex": "m/f", "mmse": "mmse", "cdr": "cdr"}
    table = {}
    for row in rows:
        session = (row.get(columns["id"]) or "").strip()  # None in a short row
        if not session:
            continue
        table[session] = {
            key: (row.get(columns.get(col, ""), "") or "").strip() for key, col in pick.items()
        }
    return table


# --------------------------------------------------------------------------- slicing


def _label_square(labels: np.ndarray, size: int, fit: str) -> np.ndarray:
    """A label slice brought to ``(size, size)`` with nearest-neighbour sampling."""
    side = max(labels.shape) if fit == "pad" else min(labels.shape) if fit == "crop" else None
    if side is not None:
        labels = to_square(labels, side, fit)  # pads or crops only: no resampling
    if labels.shape != (size, size):
        labels = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))
    return labels


def seg_slices(
    seg: np.ndarray, affine: np.ndarray, indices: np.ndarray, size: int, fit: str = "resize"
) -> np.ndarray:
    """Axial label slices at the voxel ``indices`` returned by ``slice_volume``, in the
    same display orientation, as PNG gray levels (label times 85)."""
    axis = voxel_axis(affine, "axial")
    flipped = nib.orientations.io_orientation(affine)[axis, 1] < 0
    ras_index = seg.shape[axis] - 1 - indices if flipped else indices
    labels = np.clip(np.rint(seg), 0, 255 // SEG_SCALE).astype(np.uint8) * SEG_SCALE
    stack = _to_ras_slices(labels, affine, "axial")
    return np.stack([_label_square(np.ascontiguousarray(stack[i]), size, fit) for i in ras_index])


def slice_session(session: Session, size: int, fit: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, segs)``: the brain slices of one session and its label slices (or None)."""
    vol, affine = read_volume(session.image)
    images, _, indices = slice_volume(
        vol, affine, "axial", None, size, fit, name=str(session.image)
    )
    if session.seg is None:
        return images, None
    seg, seg_affine = read_volume(session.seg)
    if seg.shape != vol.shape:
        raise DataError(
            session.seg,
            f"shape {seg.shape} differs from its image {session.image.name} {vol.shape}",
        )
    if not np.allclose(seg_affine, affine, atol=1e-2):
        raise DataError(session.seg, f"orientation differs from its image {session.image.name}")
    return images, seg_slices(seg, affine, indices, size, fit)


# --------------------------------------------------------------------------- writing


@contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DataError(
                out, "disk full (no space left on device); nothing was written"
            ) from exc
        raise DataError(out, f"cannot write ({exc.strerror or exc})") from exc


def _write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image, np.uint8), mode="L").save(path)


def write_session(
    tmp: Path, split: str, session: Session, images: np.ndarray, segs: np.ndarray | None
) -> None:
    """Write one subject's image (and label) slices into the split folders of ``tmp``."""
    for k, image in enumerate(images):
        _write_png(
            tmp / f"keras_png_slices_{split}" / f"case_{session.subject}_slice_{k}.nii.png", image
        )
    for k, seg in enumerate(segs if segs is not None else []):
        _write_png(
            tmp / f"keras_png_slices_seg_{split}" / f"seg_{session.subject}_slice_{k}.nii.png", seg
        )


def write_labels(path: Path, sessions: list[Session], splits: dict[str, str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_COLUMNS)
        for s in sessions:
            clinical = [s.clinical.get(column, "") for column in LABEL_COLUMNS[3:]]
            writer.writerow([s.subject, s.session, splits[s.subject], *clinical])


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(not math.isfinite(x) or x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {fractions}: expected three numbers >= 0 summing to 1")
    if f[0] == 0:
        raise ConfigError(f"split fractions {fractions}: the train fraction must be positive")
    return f  # type: ignore[return-value]


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "already exists; pass --force (force=True) to replace it")


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (replacing ``out`` with ``force``)."""
    _check_out(out, force)
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(tmp, out)


# --------------------------------------------------------------------------- entry point


def prepare_oasis1(
    src: Path,
    out: Path,
    size: int = 256,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    force: bool = False,
    *,
    fit: str = "resize",
    labels: Path | None = None,
    skip_bad: bool = False,
    verbose: bool = False,
) -> dict:
    """Write the OASIS PNG slice dataset for the OASIS-1 sessions under ``src`` into ``out``.

    size:      side of the square PNG slices
    fractions: train/validate/test shares of the subjects (seeded by ``seed``)
    force:     replace an existing ``out``
    labels:    clinical table (default: ``oasis_cross-sectional.csv`` found under ``src``)
    skip_bad:  skip unreadable sessions (listed in the summary) instead of failing

    Everything is written to a hidden folder next to ``out`` and renamed at the end.
    Returns a summary: subjects and slices per split, the clinical table used, notes.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    fractions = _check_fractions(fractions)
    if size < 8:
        raise ConfigError(f"size={size}: expected at least 8 pixels")
    if not src.is_dir():
        raise DataError(src, "no such folder")
    _check_out(out, force)
    sessions, notes = find_sessions(src)
    table_path = labels if labels is not None else find_clinical_table(src)
    if table_path is not None:
        _attach_clinical(sessions, read_clinical_table(Path(table_path)), notes)
    splits = split_subjects([s.subject for s in sessions], fractions, seed)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _disk_errors(out):
            written = _write_all(tmp, sessions, splits, size, fit, skip_bad, notes, verbose)
            write_labels(tmp / "labels.csv", written, splits)
            summary = _summary(tmp, out, src, written, splits, table_path, notes)
            summary.update(size=size, fractions=list(fractions), seed=seed)
            (tmp / "prepare.json").write_text(dumps(summary) + "\n")
            _publish(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _attach_clinical(
    sessions: list[Session], table: dict[str, dict[str, str]], notes: list[str]
) -> None:
    for s in sessions:
        s.clinical = table.get(s.session, {})
        if not s.clinical:
            notes.append(f"{s.session}: no row in the clinical table")


def _write_all(
    tmp: Path,
    sessions: list[Session],
    splits: dict[str, str],
    size: int,
    fit: str,
    skip_bad: bool,
    notes: list[str],
    verbose: bool,
) -> list[Session]:
    """Slice and write every session; returns the sessions written."""
    for split in SPLIT_NAMES:
        (tmp / f"keras_png_slices_{split}").mkdir(parents=True)
        (tmp / f"keras_png_slices_seg_{split}").mkdir(parents=True)
    written = []
    for session in tqdm(
        sessions, desc="slicing", unit="subject", disable=not verbose, file=sys.stderr
    ):
        try:
            images, segs = slice_session(session, size, fit)
        except DataError as exc:
            if not skip_bad:
                raise
            notes.append(f"skipped {exc}")
            continue
        if segs is None:
            notes.append(f"{session.session}: no FSL_SEG segmentation, image slices only")
        write_session(tmp, splits[session.subject], session, images, segs)
        written.append(session)
    if not written:
        raise DataError(tmp.parent, "no session could be read (all skipped)")
    return written


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png"))


def _summary(
    tmp: Path,
    out: Path,
    src: Path,
    sessions: list[Session],
    splits: dict[str, str],
    table: Path | None,
    notes: list[str],
) -> dict:
    """Counts per split (read from the written folders ``tmp``) and notes."""
    return {
        "out": str(out),
        "source": str(src),
        "clinical_table": None if table is None else str(table),
        "subjects": {s: sum(splits[x.subject] == s for x in sessions) for s in SPLIT_NAMES},
        "slices": {s: _count(tmp / f"keras_png_slices_{s}") for s in SPLIT_NAMES},
        "seg_slices": {s: _count(tmp / f"keras_png_slices_seg_{s}") for s in SPLIT_NAMES},
        "notes": notes,
    }
