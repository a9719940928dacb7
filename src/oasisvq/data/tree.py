"""Image trees: ``<root>/{train,validate,test}/[<Class>/]*.{png,jpg}``, or a flat folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oasisvq.data.images import is_image_file, read_gray8, to_square
from oasisvq.data.slices import SPLIT_NAMES, SliceSet, Splits
from oasisvq.errors import DataError


def decode_files(
    paths: list[Path], size: int, fit: str, skip_bad: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode image files to ``(N, size, size) uint8``.

    Returns the stack, the indices of ``paths`` that were kept and the skipped
    ``"path: reason"`` lines. Without ``skip_bad`` the first bad file raises.
    """
    out = np.empty((len(paths), size, size), np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for i, path in enumerate(paths):
        try:
            out[len(kept)] = to_square(read_gray8(path), size, fit)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        kept.append(i)
    return out[: len(kept)], kept, skipped


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_split(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files of one split folder and the class name of each ('' if none)."""
    files = _images_in(folder)
    labels = [""] * len(files)
    for cls in _class_dirs(folder):
        found = _images_in(cls)
        files += found
        labels += [cls.name] * len(found)
    return files, labels


def is_tree(root: Path) -> bool:
    return any((root / s).is_dir() for s in SPLIT_NAMES)


def load_tree(root: Path, size: int, fit: str = "resize", skip_bad: bool = False) -> Splits:
    """Read a split/class-folder tree. Class names are shared across splits."""
    listed = {s: list_split(root / s) for s in SPLIT_NAMES if (root / s).is_dir()}
    class_names = sorted({c for _, labels in listed.values() for c in labels if c})
    splits: Splits = {}
    for split, (files, labels) in listed.items():
        if not files:
            raise DataError(root / split, "folder holds no images (.png/.jpg/.tif/.bmp)")
        splits[split] = _slice_set(files, labels, class_names, size, fit, skip_bad)
    return splits


def load_folder(path: Path, size: int, fit: str = "resize", skip_bad: bool = False) -> SliceSet:
    """A single image, or every image of a folder (recursively by class folders)."""
    if path.is_file():
        files, labels = [path], [""]
    elif path.is_dir():
        files, labels = list_split(path)
        if not files:
            raise DataError(path, "folder holds no images (.png/.jpg/.tif/.bmp)")
    else:
        raise DataError(path, "no such file or folder")
    return _slice_set(files, labels, sorted({c for c in labels if c}), size, fit, skip_bad)


def _slice_set(
    files: list[Path],
    labels: list[str],
    class_names: list[str],
    size: int,
    fit: str,
    skip_bad: bool,
) -> SliceSet:
    images, kept, skipped = decode_files(files, size, fit, skip_bad)
    if not kept:
        raise DataError(files[0].parent, "no readable images (all skipped)")
    index = {c: i for i, c in enumerate(class_names)}
    return SliceSet(
        images=images,
        subjects=[files[i].stem for i in kept],
        sources=[str(files[i]) for i in kept],
        classes=np.array([index.get(labels[i], -1) for i in kept], np.int64),
        class_names=class_names,
        skipped=skipped,
    )
