"""Run directories: never overwritten without ``force``; ``resume`` continues one."""

from __future__ import annotations

import shutil
from pathlib import Path

from oasisvq.errors import ConfigError


def prepare_run_dir(out: Path, resume: bool, force: bool) -> Path:
    out = Path(out)
    if resume and force:
        raise ConfigError("--resume and --force exclude each other")
    if out.exists() and any(out.iterdir()):
        if resume:
            return out
        if not force:
            raise ConfigError(
                f"{out}: run directory exists and is not empty; pass --resume to continue it or --force to overwrite it"
            )
        shutil.rmtree(out)
    elif resume:
        raise ConfigError(f"{out}: nothing to resume (no such run directory)")
    out.mkdir(parents=True, exist_ok=True)
    return out
