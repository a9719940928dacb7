"""The OASIS preprocessed PNG slice release (the data of the original report).

Layout under ``root``::

    keras_png_slices_{train,validate,test}/case_<subject>_slice_<k>.nii.png       (images)
    keras_png_slices_seg_{train,validate,test}/seg_<subject>_slice_<k>.nii.png    (masks)

Images are 256x256 8-bit gray. Only the image folders are ever read as images; the
segmentation masks (pixel values 0/85/170/255 = background/CSF/grey/white matter in the
release) are available separately through :func:`load_oasis_png_masks`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from oasisvq.data.images import is_image_file, read_gray8
from oasisvq.data.slices import SPLIT_NAMES, SliceSet, Splits
from oasisvq.data.tree import decode_files
from oasisvq.data.volumes import read_participants
from oasisvq.errors import DataError

IMAGE_DIR = "keras_png_slices_{split}"
MASK_DIR = "keras_png_slices_seg_{split}"
IMAGE_NAME = re.compile(r"^case_(?P<subject>.+?)_slice_(?P<k>\d+)\.nii\.png$")
MASK_NAME = "seg_{subject}_slice_{k}.nii.png"


def is_oasis_png(root: Path) -> bool:
    """True if ``root`` holds any ``keras_png_slices_{train,validate,test}`` folder."""
    root = Path(root)
    return any((root / IMAGE_DIR.format(split=s)).is_dir() for s in SPLIT_NAMES)


def parse_name(path: Path) -> tuple[str, int]:
    """``case_<subject>_slice_<k>.nii.png`` -> ``(subject, k)``; DataError otherwise."""
    m = IMAGE_NAME.match(path.name)
    if m is None:
        raise DataError(path, "file name does not match case_<subject>_slice_<k>.nii.png")
    return m.group("subject"), int(m.group("k"))


def list_oasis_split(
    folder: Path, skip_bad: bool = False
) -> tuple[list[Path], list[tuple[str, int]], list[str]]:
    """Image files of one split folder, sorted by subject then slice index.

    Returns the files, their ``(subject, slice index)`` and the skipped lines (names not
    matching the pattern; these raise DataError unless ``skip_bad``)."""
    found: list[tuple[tuple[str, int], Path]] = []
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not is_image_file(path):
            continue
        try:
            found.append((parse_name(path), path))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found], [key for key, _ in found], skipped


def _positions(keys: list[tuple[str, int]]) -> np.ndarray:
    """Slice index / max slice index of the same subject, ``(N,) float32`` in ``[0, 1]``."""
    top: dict[str, int] = {}
    for subject, k in keys:
        top[subject] = max(top.get(subject, 0), k)
    return np.array([k / max(top[s], 1) for s, k in keys], np.float32)


def _subject_key(subject: str) -> str:
    """``"0042"``, ``"042"`` and ``"OAS1_0042"`` name the same subject."""
    digits = re.sub(r"^OAS\d_", "", subject.strip())
    return str(int(digits)) if digits.isdigit() else digits


def read_ages(root: Path) -> dict[str, float]:
    """Ages by subject from ``root/labels.csv`` (written by ``oasisvq prepare``) or
    ``root/participants.csv`` (columns ``subject`` and ``age``); ``{}`` when neither exists."""
    for name in ("labels.csv", "participants.csv"):
        path = Path(root) / name
        if path.is_file():
            return {_subject_key(s): age for s, (age, _) in read_participants(path).items()}
    return {}


def load_oasis_split(
    folder: Path,
    size: int,
    fit: str = "resize",
    skip_bad: bool = False,
    ages: dict[str, float] | None = None,
) -> SliceSet:
    """Read one ``keras_png_slices_<split>`` folder into a :class:`SliceSet`; ``ages``
    (by subject, see :func:`read_ages`) fills ``SliceSet.ages``, NaN where unknown."""
    files, keys, skipped = list_oasis_split(folder, skip_bad)
    if not files:
        raise DataError(folder, "folder holds no case_<subject>_slice_<k>.nii.png images")
    images, kept, bad = decode_files(files, size, fit, skip_bad)
    if not kept:
        raise DataError(folder, "no readable images (all skipped)")
    keys = [keys[i] for i in kept]
    ages = ages or {}
    return SliceSet(
        images=images,
        subjects=[s for s, _ in keys],
        sources=[str(files[i]) for i in kept],
        positions=_positions(keys),
        ages=np.array([ages.get(_subject_key(s), np.nan) for s, _ in keys], np.float32),
        skipped=skipped + bad,
    )


def load_oasis_png(
    root: Path, size: int = 128, fit: str = "resize", skip_bad: bool = False
) -> Splits:
    """Read the OASIS PNG release: ``{split: SliceSet}`` with ``(N, size, size) uint8``
    images, subject ids, slice positions (index / the subject's max index) and, when the
    root holds a ``labels.csv`` or ``participants.csv``, ages."""
    root = Path(root)
    ages = read_ages(root)
    splits: Splits = {}
    for split in SPLIT_NAMES:
        folder = root / IMAGE_DIR.format(split=split)
        if folder.is_dir():
            splits[split] = load_oasis_split(folder, size, fit, skip_bad, ages)
    if not splits:
        raise DataError(root, "no keras_png_slices_{train,validate,test} folders")
    return splits


def mask_path(root: Path, split: str, image: Path) -> Path:
    """The segmentation file that belongs to an image file of ``split``."""
    subject, k = parse_name(Path(image))
    return Path(root) / MASK_DIR.format(split=split) / MASK_NAME.format(subject=subject, k=k)


def load_oasis_png_masks(
    root: Path, split: str, size: int = 128, sources: list[str] | None = None
) -> np.ndarray:
    """Segmentation masks of one split, ``(N, size, size) uint8`` with the release's raw
    label values, resized with nearest neighbour so no new labels appear.

    Aligned with ``sources`` (e.g. ``SliceSet.sources`` from :func:`load_oasis_png`) when
    given, else with every image of the split in :func:`load_oasis_png` order. A missing
    or unreadable mask raises DataError naming it."""
    root = Path(root)
    if split not in SPLIT_NAMES:
        raise ValueError(f"split={split!r}: expected one of {SPLIT_NAMES}")
    if sources is None:
        folder = root / IMAGE_DIR.format(split=split)
        if not folder.is_dir():
            raise DataError(folder, "no such folder")
        images = list_oasis_split(folder)[0]
    else:
        images = [Path(s) for s in sources]
    out = np.empty((len(images), size, size), np.uint8)
    for i, image in enumerate(images):
        path = mask_path(root, split, image)
        if not path.is_file():
            raise DataError(path, f"missing segmentation mask for {Path(image).name}")
        out[i] = _resize_nearest(read_gray8(path), size)
    return out


def _resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
