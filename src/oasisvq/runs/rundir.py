"""Run directories: never overwritten without ``force``, never replaced unless they are a
run of this tool, never mixed with the data they read; ``resume`` continues one.

Commands that write into a run hold it through :func:`open_run_dir`, which also takes
the run's lock (``RUN/.lock``) for as long as the command runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from oasisvq.errors import ConfigError, OutputError, RunError
from oasisvq.io import check_writable, output_error, run_lock
from oasisvq.runs import checkpoint

RUN_KINDS = ("vqvae", "prior", "features")  # the "kind" of a config.json this tool writes
LOCK = ".lock"
# a run's folders for networks trained on its images alone, not on its codes (so a
# decoder fine-tune keeps them): the 2D feature network and the 3D age/sex network
FEATURES_DIRS = {2: "features", 3: "features3d"}

Inputs = Iterable[Path | str | None]


def is_run_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a run of this tool: a ``config.json`` whose ``kind`` this
    tool writes, or checkpoints."""
    path = Path(path)
    if checkpoint.candidates(path) or (path / "checkpoints" / "LATEST").is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and config.get("kind") in RUN_KINDS


def is_empty(path: Path | str) -> bool:
    """Whether folder ``path`` holds nothing but a run lock."""
    return all(p.name == LOCK for p in Path(path).iterdir())


def overlapping_input(out: Path | str, inputs: Inputs) -> Path | None:
    """The first of ``inputs`` (None entries ignored) that ``out`` is, holds or lies in."""
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if target == source or source in target.parents or target in source.parents:
            return source
    return None


def check_run_dir(out: Path | str, *, resume: bool, force: bool, inputs: Inputs = ()) -> Path:
    """Refuse what ``prepare_run_dir`` would refuse, without touching anything."""
    out = Path(out)
    if resume and force:
        raise ConfigError("--resume and --force exclude each other")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: cannot write: a file stands where a folder is expected")
    if resume:
        _check_resumable(out)
        return out
    if (source := overlapping_input(out, inputs)) is not None:
        raise ConfigError(
            f"{out}: the run folder would overlap the input {source}; choose another --out"
        )
    if out.is_dir() and not is_empty(out):
        if not is_run_dir(out):
            raise RunError(
                f"{out}: exists and is not a run of oasisvq (no config.json of a run, no "
                "checkpoints); --force only replaces a run folder, so choose another --out"
            )
        if not force:
            raise ConfigError(
                f"{out}: run directory exists and is not empty; pass --resume to continue "
                "it or --force to overwrite it"
            )
    return out


def _check_resumable(out: Path) -> None:
    if not out.is_dir():
        raise RunError(f"{out}: nothing to resume: no such run folder")
    if checkpoint.latest(out) is not None:
        return
    if is_run_dir(out):
        raise RunError(
            f"{out}: nothing to resume: no checkpoint was written (the training stopped "
            "before its first one); start it again with --force"
        )
    raise RunError(f"{out}: nothing to resume: not a run of oasisvq (no checkpoints)")


def prepare_run_dir(out: Path | str, resume: bool, force: bool, inputs: Inputs = ()) -> Path:
    """Check ``out`` (see :func:`check_run_dir`); with ``force`` empty it (it is a run of
    this tool); create it and prove it writable. Returns ``out``.

    ``inputs``: the folders the command reads (data roots, a parent run); ``out`` may
    not be, hold or lie inside any of them."""
    out = check_run_dir(out, resume=resume, force=force, inputs=inputs)
    if resume:
        return out
    if force and out.is_dir():
        _clear(out)
    return check_writable(out)


def _clear(out: Path) -> None:
    """Delete what ``out`` holds, but its lock (held by this process) and never through a
    symbolic link."""
    for entry in out.iterdir():
        if entry.name == LOCK:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            raise output_error(entry, exc) from exc


@contextlib.contextmanager
def open_run_dir(
    out: Path | str, *, resume: bool = False, force: bool = False, inputs: Inputs = ()
) -> Iterator[Path]:
    """Hold run folder ``out`` for a command that writes into it.

    Refuses (before creating anything) what :func:`check_run_dir` refuses: ``--force``
    on a folder that is not a run of this tool or that overlaps ``inputs``, a resume of
    a folder without a readable-looking checkpoint (never a fresh run instead). Then
    takes ``RUN/.lock`` for the whole ``with`` block (a second process is refused with
    a ``RunError``; a dead holder's lock is released by the system), checks again under
    the lock, empties the run with ``force`` and yields ``out``."""
    if int(os.environ.get("RANK", "0")) != 0:
        # under torchrun only rank 0 checks, holds and writes the folder; the others train
        # beside it (they wait for it at the process group's barriers). Checking here too
        # would race rank 0, which may already have started writing into it.
        yield Path(out)
        return
    check_run_dir(out, resume=resume, force=force, inputs=inputs)
    created = not Path(out).exists()
    try:
        with run_lock(out):
            yield prepare_run_dir(out, resume, force, inputs)
    except BaseException:
        _remove_if_untouched(Path(out), created)
        raise


def _remove_if_untouched(out: Path, created: bool) -> None:
    """A folder this command created and wrote nothing into but its lock (bad data,
    say) is removed again, so a failed first try leaves no half run behind."""
    if created and out.is_dir() and {p.name for p in out.iterdir()} <= {".lock"}:
        shutil.rmtree(out, ignore_errors=True)
