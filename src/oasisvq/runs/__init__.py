"""Run folders: the ``Run`` handle, checkpoints, cached codes, and the folder rules."""

from oasisvq.runs.run import Run, prior_dir, read_kind

__all__ = ["Run", "prior_dir", "read_kind"]
