"""A built-in demo data set: slices of the MNI152 template that nilearn ships.

``nilearn.datasets.load_mni152_template`` and ``load_mni152_brain_mask`` read files
bundled inside the nilearn package, so this works offline and needs no download.

This is a DEMO, not a data set for real results: it is a single (average) brain, so
the splits cannot be split by subject. Slices are assigned by their position along
the axis instead, deterministically: of the slices that contain brain, every 10th
goes to ``validate``, the one after it to ``test``, the rest to ``train``. Neighbouring
slices look alike, so validation/test scores on it are optimistic.
"""

from __future__ import annotations

import numpy as np

from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet, Splits
from oasisvq.data.volumes import slice_volume
from oasisvq.errors import DataError

SUBJECT = "MNI152"
SOURCE = "nilearn:MNI152_T1_1mm"
EVERY = 10  # one slice in EVERY goes to validate, the next one to test
# slices with at least this share of the largest slice's brain area: the demo's slices
# (and so its samples) all show a whole brain, not the thin caps above and below it
MIN_AREA = 0.6


def mni152_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm MNI152 template and brain mask from nilearn's package data.

    Returns ``(template float32 (197, 233, 189) in [0, 1], mask bool (same shape),
    (4, 4) affine)``."""
    from nilearn import datasets  # slow import: only when the demo data is wanted

    template = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    vol = np.asarray(template.get_fdata(dtype=np.float32))
    brain = np.asarray(mask.dataobj) > 0
    if vol.shape != brain.shape or not np.allclose(template.affine, mask.affine):
        raise DataError(SOURCE, f"template {vol.shape} and brain mask {brain.shape} do not match")
    return vol, brain, np.asarray(template.affine, np.float64)


def split_of(order: np.ndarray) -> np.ndarray:
    """Split name for the i-th kept slice: ``i % 10 == 0`` validate, ``== 1`` test, else train."""
    phase = np.asarray(order) % EVERY
    return np.where(phase == 0, "validate", np.where(phase == 1, "test", "train"))


def load_builtin(opts: DataOptions | None = None) -> Splits:
    """Slices of the MNI152 template along ``opts.axis`` (axial by default), masked with
    its brain mask, as ``{train, validate, test}`` of ``(N, opts.size, opts.size) uint8``.
    ``opts.mask`` and the split options do not apply (see the module docstring)."""
    opts = opts or DataOptions()
    vol, brain, affine = mni152_volume()
    images, positions, indices = slice_volume(
        vol, affine, opts.axis, brain, opts.size, opts.fit, name=SOURCE, min_area=MIN_AREA
    )
    names = split_of(np.arange(len(images)))
    splits: Splits = {}
    for split in ("train", "validate", "test"):
        idx = np.flatnonzero(names == split)
        splits[split] = SliceSet(
            images=images[idx],
            subjects=[SUBJECT] * len(idx),
            sources=[f"{SOURCE}#{k}" for k in indices[idx]],
            positions=positions[idx],
        )
    return splits
