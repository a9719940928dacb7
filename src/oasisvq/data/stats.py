"""Summary numbers of loaded splits, for ``oasisvq data``."""

from __future__ import annotations

import numpy as np

from oasisvq.data.slices import SliceSet, Splits

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
