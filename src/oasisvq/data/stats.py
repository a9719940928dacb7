"""Summary numbers of loaded splits (slices or whole volumes), for ``oasisvq data``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from oasisvq.data.slices import SliceSet, Splits

if TYPE_CHECKING:
    from oasisvq.data.volumes3d import VolumeSet

UNLABELLED = "(none)"
_CHUNK = 1024  # slices per chunk when scanning (images may be large memory maps)


def _intensity(images: np.ndarray) -> tuple[int | None, int | None, float | None]:
    """Min, max and mean pixel value over ``(N, S, S) uint8`` images, chunk by chunk."""
    if len(images) == 0:
        return None, None, None
    lo, hi, total = 255, 0, 0.0
    for start in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[start : start + _CHUNK])
        lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
        total += float(chunk.sum(dtype=np.float64))
    return lo, hi, total / images.size


def _class_counts(s: SliceSet) -> dict[str, int]:
    values, counts = np.unique(np.asarray(s.classes), return_counts=True)
    return {
        s.class_names[v] if v >= 0 else UNLABELLED: int(c)
        for v, c in zip(values, counts, strict=True)
    }


def _ages(s: SliceSet) -> tuple[float | None, float | None]:
    ages = np.asarray(s.ages, np.float64)
    ages = ages[np.isfinite(ages)]
    return (float(ages.min()), float(ages.max())) if ages.size else (None, None)


def describe_split(s: SliceSet) -> dict:
    """Numbers of one split (see :func:`describe`)."""
    lo, hi, mean = _intensity(s.images)
    age_min, age_max = _ages(s)
    return {
        "count": len(s),
        "classes": _class_counts(s),
        "subjects": len(set(s.subjects)),
        "size": int(s.images.shape[-1]) if s.images.ndim == 3 else None,
        "min": lo,
        "max": hi,
        "mean": mean,
        "age_min": age_min,
        "age_max": age_max,
        "skipped": len(s.skipped),
        "skipped_files": list(s.skipped),
    }


def describe(splits: Splits) -> dict:
    """``{split: {count, classes: {name: count}, subjects, size, min, max, mean,
    age_min, age_max, skipped, skipped_files}}``. Intensities are uint8 pixel values
    (0..255); unknown values are None; ``classes`` uses ``"(none)"`` for unlabelled
    slices; ``skipped_files`` are the ``"path: reason"`` lines of the files skipped."""
    return {name: describe_split(s) for name, s in splits.items()}


def _fmt(value: object, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def format_stats(d: dict) -> str:
    """A plain-text table of :func:`describe` output, one row per split, then the
    per-class counts when any slice has a class, then every skipped file."""
    header = ("split", "slices", "subjects", "size", "min", "max", "mean", "ages", "skipped")
    rows = [header]
    for name, s in d.items():
        ages = "-" if s["age_min"] is None else f"{s['age_min']:.0f}-{s['age_max']:.0f}"
        rows.append(
            (
                name,
                str(s["count"]),
                str(s["subjects"]),
                _fmt(s["size"]),
                _fmt(s["min"]),
                _fmt(s["max"]),
                _fmt(s["mean"], ".1f"),
                ages,
                str(s["skipped"]),
            )
        )
    lines = _table(rows)
    classes = sorted({c for s in d.values() for c in s["classes"] if c != UNLABELLED})
    if classes:
        rows = [("split", *classes, UNLABELLED)]
        rows += [
            (n, *(str(s["classes"].get(c, 0)) for c in (*classes, UNLABELLED)))
            for n, s in d.items()
        ]
        lines += ["", "slices per class:", *_table(rows)]
    skipped = [(n, line) for n, s in d.items() for line in s.get("skipped_files", [])]
    if skipped:
        lines += ["", f"skipped files ({len(skipped)}):"]
        lines += [f"  {name}: {line}" for name, line in skipped]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = [
        r[0].ljust(widths[0])
        + "  "
        + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        for r in rows
    ]
    return [line.rstrip() for line in fmt]


# ----------------------------------------------------------------------------- whole volumes


def _age_summary(ages: np.ndarray) -> dict:
    ages = np.asarray(ages, np.float64)
    ages = ages[np.isfinite(ages)]
    if not ages.size:
        return {"age_min": None, "age_median": None, "age_max": None}
    return {
        "age_min": float(ages.min()),
        "age_median": float(np.median(ages)),
        "age_max": float(ages.max()),
    }


def describe_volume_split(s: VolumeSet) -> dict:
    """Numbers of one split of whole volumes (see :func:`describe_volumes`)."""
    sexes = np.asarray(s.sexes)
    return {
        "volumes": len(s),
        "subjects": len(set(s.subjects)),
        "masked": int(np.count_nonzero(s.masked)),
        **_age_summary(s.ages),
        "female": int(np.count_nonzero(sexes == 0)),
        "male": int(np.count_nonzero(sexes == 1)),
        "sex_unknown": int(np.count_nonzero(sexes < 0)),
        "skipped": len(s.skipped),
        "skipped_files": list(s.skipped),
    }


def describe_volumes(sets: dict[str, VolumeSet]) -> dict:
    """``{shape, voxel_mm, splits: {split: {volumes, subjects, masked, age_min, age_median,
    age_max, female, male, sex_unknown, skipped, skipped_files}}, brain_extent: {min,
    median, max}, brains_cut}``. ``brain_extent`` is the per-axis (x, y, z) size in
    voxels of the brains' bounding boxes before the crop/pad (None when unknown);
    ``brains_cut`` counts the volumes whose brain is larger than ``shape``."""
    first = next(iter(sets.values()))
    shape = first.shape
    extents = np.concatenate([np.asarray(s.extents).reshape(-1, 3) for s in sets.values()])
    extents = extents[(extents >= 0).all(axis=1)]
    extent = None
    if len(extents):
        extent = {
            "min": extents.min(axis=0).tolist(),
            "median": np.median(extents, axis=0).tolist(),
            "max": extents.max(axis=0).tolist(),
        }
    return {
        "shape": list(shape),
        "voxel_mm": float(first.voxel_mm),
        "splits": {name: describe_volume_split(s) for name, s in sets.items()},
        "brain_extent": extent,
        "brains_cut": int(np.count_nonzero((extents > np.asarray(shape)).any(axis=1))),
    }


def _xyz(values: list) -> str:
    return "x".join(f"{v:g}" for v in values)


def format_volume_stats(d: dict) -> str:
    """A plain-text summary of :func:`describe_volumes` output: one row per split, the
    grid, the brains' extent, then every skipped file."""
    header = ("split", "volumes", "subjects", "masked", "ages", "median", "F", "M", "?", "skipped")
    rows = [header]
    for name, s in d["splits"].items():
        ages = "-" if s["age_min"] is None else f"{s['age_min']:.0f}-{s['age_max']:.0f}"
        median = _fmt(s["age_median"], ".1f")
        counts = (s["female"], s["male"], s["sex_unknown"], s["skipped"])
        rows.append(
            (name, str(s["volumes"]), str(s["subjects"]), str(s["masked"]), ages, median)
            + tuple(map(str, counts))
        )
    lines = _table(rows)
    mm = [n * d["voxel_mm"] for n in d["shape"]]
    lines += [
        "",
        f"volumes: {_xyz(d['shape'])} voxels of {d['voxel_mm']:g} mm ({_xyz(mm)} mm, RAS)",
    ]
    e = d["brain_extent"]
    if e is not None:
        lines.append(
            f"brain extent (voxels): min {_xyz(e['min'])}, median {_xyz(e['median'])}, "
            f"max {_xyz(e['max'])}"
        )
        lines.append(
            f"{d['brains_cut']} brain(s) larger than {_xyz(d['shape'])}: cut at the edges"
            if d["brains_cut"]
            else f"every brain fits inside {_xyz(d['shape'])}"
        )
    skipped = [(n, line) for n, s in d["splits"].items() for line in s["skipped_files"]]
    if skipped:
        lines += ["", f"skipped files ({len(skipped)}):"]
        lines += [f"  {name}: {line}" for name, line in skipped]
    return "\n".join(lines)
