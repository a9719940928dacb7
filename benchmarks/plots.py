"""The benchmarks' figures: matplotlib with the Agg backend, and bar charts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display)."""
    import matplotlib  # lazy: slow to import, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    return plt


def save(fig, path: Path, dpi: int = 120) -> None:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def bar_panels(
    path: Path, labels: list[str], panels: list[tuple[str, list[float | None]]], title: str
) -> None:
    """Side-by-side horizontal bar charts sharing ``labels`` (one bar per label): each
    panel is ``(axis title, values)``; a None value is drawn as a missing bar."""
    plt = pyplot()
    height = 0.9 + 0.28 * len(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        shown = [0.0 if v is None else float(v) for v in values]
        ax.barh(range(len(labels)), shown, color="C0")
        for i, v in enumerate(values):
            ax.text(shown[i], i, " -" if v is None else f" {v:.3g}", va="center", fontsize=8)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels))
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        ax.margins(x=0.2)
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=110)
