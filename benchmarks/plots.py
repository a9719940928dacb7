"""One horizontal bar chart per benchmark figure (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def bar_panels(
    path: Path, labels: list[str], panels: list[tuple[str, list[float | None]]], title: str
) -> None:
    """Side-by-side horizontal bar charts sharing ``labels`` (one bar per label): each
    panel is ``(axis title, values)``; a None value is drawn as a missing bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
