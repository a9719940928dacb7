"""One entry point for every data layout, with a decode-once uint8 cache.

``load_splits(root)`` detects the layout:

* ``None``                       -> the built-in MNI152 brain (nilearn ships it)
* ``keras_png_slices_*`` folders -> the OASIS preprocessed PNG slice release
* ``train/``, ``validate/``, ``test/`` folders -> an image tree (optionally class folders)
* NIfTI / Analyze volumes        -> volumes sliced into 2D, split by subject
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from oasisvq.data import builtin, oasis_png, tree, volumes, volumes3d
from oasisvq.data.cache import cache_dir, cached_folder, fingerprint
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet, Splits
from oasisvq.errors import DataError
from oasisvq.io import dumps


def detect_layout(root: Path) -> str:
    if not root.exists():
        raise DataError(root, "no such file or folder")
    if not root.is_dir():
        raise DataError(root, "expected a data folder")
    if tree.is_tree(root):
        return "tree"
    if oasis_png.is_oasis_png(root):
        return "oasis-png"
    if volumes.has_volumes(root):
        return "volumes"
    if not any(root.iterdir()):
        raise DataError(root, "folder is empty")
    raise DataError(
        root,
        "no data found: expected keras_png_slices_* folders, train/validate/test folders, "
        "or NIfTI/Analyze volumes",
    )


def _read(root: Path | None, opts: DataOptions) -> Splits:
    if root is None:
        return builtin.load_builtin(opts)
    layout = detect_layout(root)
    if layout == "tree":
        return tree.load_tree(root, opts.size, opts.fit, opts.skip_bad)
    if layout == "oasis-png":
        return oasis_png.load_oasis_png(root, opts.size, opts.fit, opts.skip_bad)
    return volumes.load_volume_tree(root, opts)


CACHE_VERSION = 3  # bump when decoding, slicing or normalisation changes


def _cache_key(root: Path | None, opts: DataOptions) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, str(root), opts.__dict__], default=str).encode())
    if root is not None:
        fingerprint(h, root)
    return h.hexdigest()[:20]


def _save(tmp: Path, splits: Splits) -> None:
    meta = {}
    for name, s in splits.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(s.images))
        meta[name] = {
            "subjects": s.subjects,
            "sources": s.sources,
            "classes": s.classes.tolist(),
            "positions": [None if np.isnan(v) else float(v) for v in s.positions],
            "ages": [None if np.isnan(v) else float(v) for v in s.ages],
            "class_names": s.class_names,
            "skipped": s.skipped,
        }
    (tmp / "meta.json").write_text(dumps(meta))


def _load_cached(folder: Path) -> Splits:
    meta = json.loads((folder / "meta.json").read_text())
    out: Splits = {}
    for name, m in meta.items():
        nan = float("nan")
        out[name] = SliceSet(
            images=np.load(folder / f"{name}.npy", mmap_mode="r"),
            subjects=m["subjects"],
            sources=m["sources"],
            classes=np.array(m["classes"], np.int64),
            positions=np.array([nan if v is None else v for v in m["positions"]], np.float32),
            ages=np.array([nan if v is None else v for v in m["ages"]], np.float32),
            class_names=m["class_names"],
            skipped=m["skipped"],
        )
    return out


def load_splits(
    root: str | Path | None, opts: DataOptions | None = None, cache: bool = True
) -> Splits:
    """Read every split of a data root. Images are decoded once and cached as
    memory-mapped ``uint8`` arrays (shared by all processes on a machine). With
    ``opts.dims == 3`` the splits hold whole volumes (:class:`VolumeSet`), not slices."""
    opts = opts or DataOptions()
    root = None if root is None else Path(root).expanduser().resolve()
    if opts.dims == 3:
        if root is None:
            raise DataError("data", "3D runs need a folder of volumes (--data ROOT)")
        return volumes3d.load_volumes(root, opts, cache)
    if not cache:
        return _read(root, opts)
    folder = cached_folder(
        cache_dir() / _cache_key(root, opts), lambda tmp: _save(tmp, _read(root, opts))
    )
    return _load_cached(folder)


def get_split(splits: Splits, name: str, root: object = None) -> SliceSet:
    if name not in splits:
        raise DataError(
            root if root is not None else "data",
            f"has no '{name}' split (found: {', '.join(splits)})",
        )
    return splits[name]
