"""Per-epoch history: CSV, TensorBoard events and a PNG of the curves."""

from __future__ import annotations

import csv
from pathlib import Path

from oasisvq.figures import curves_figure
from oasisvq.io import atomic_write, write_json


class History:
    """Rows of per-epoch scalars, rewritten in full each epoch (so a resumed run's
    history never has duplicate or missing epochs)."""

    def __init__(self, run_dir: Path, rows: list[dict] | None = None) -> None:
        self.run_dir = run_dir
        self.rows: list[dict] = list(rows or [])
        self._tb = None

    def append(self, row: dict) -> None:
        self.record(row)
        self.publish()

    def record(self, row: dict) -> None:
        """Add ``row`` in memory only (it reaches the files with :meth:`publish`)."""
        self.rows.append(row)

    def publish(self) -> None:
        """Rewrite the CSV, JSON and plot from all rows; log the last row to TensorBoard."""
        self._write_csv()
        if self.rows:
            self._write_tensorboard(self.rows[-1])
        self._write_plot()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.run_dir / "history.csv", write)
        write_json(self.run_dir / "history.json", self.rows)

    def _write_tensorboard(self, row: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # slow import, optional package
        except ImportError:  # tensorboard missing: CSV and PNG still written
            return
        if self._tb is None:
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        for k, v in row.items():
            if k != "epoch" and isinstance(v, int | float):
                self._tb.add_scalar(k, v, row["epoch"])
        self._tb.flush()

    def _write_plot(self) -> None:
        curves_figure(self.rows, self.run_dir / "curves.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
