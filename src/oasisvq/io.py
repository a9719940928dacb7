"""Small file operations every layer shares: atomic writes, strict JSON, file locks.

A file written here is either the old one or the complete new one, never half of
each: it is written under a temporary name beside its target, then renamed over it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from oasisvq.errors import OutputError, RunError


def output_error(path: Path | str, exc: OSError) -> OutputError:
    """One line for an OS error while writing ``path``."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a file stands where a folder is expected",
        errno.EEXIST: "a file stands where a folder is expected",
        errno.EISDIR: "a folder stands where a file is expected",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"{path}: cannot write: {reason}")


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` for a temporary path beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was; an
    ``OSError`` becomes an ``OutputError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def finite_json(value: object) -> object:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def dumps(value: object) -> str:
    """Strict JSON (NaN and infinities written as null), indented."""
    return json.dumps(finite_json(value), indent=2, allow_nan=False)


def write_json(path: Path | str, value: object) -> Path:
    """Write ``value`` as strict JSON to ``path`` atomically."""
    return write_text(path, dumps(value) + "\n")


def check_writable(folder: Path | str, need_bytes: int = 0) -> Path:
    """Prove that files can be written in ``folder`` (created if missing) before long
    work starts: a probe file is created and removed. A file in the way, a read-only
    folder or file system, or less than ``need_bytes`` free is an ``OutputError``."""
    folder = Path(folder)
    probe = folder / f".oasisvq-probe-{os.getpid()}"
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())  # a full disk may only refuse the write-back
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise output_error(folder, exc) from exc
    if free < need_bytes:
        raise OutputError(
            f"{folder}: cannot write: {free / 2**20:.0f} MiB free, {need_bytes / 2**20:.0f} MiB needed"
        )
    return folder


def read_json(path: Path | str, what: str = "JSON file") -> object:
    """Parse ``path``; a missing or damaged file is a ``RunError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RunError(f"{path}: {what} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: {what} is damaged ({exc})") from exc


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on file ``lock``, waiting for other holders.

    The lock is released when its holder exits or dies. Without file locking
    (Windows, some network file systems) this just goes on."""
    try:
        import fcntl  # not on Windows
    except ImportError:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold ``RUN/.lock`` for the duration of a command that writes into ``run_dir``.

    A second process is refused at once with a ``RunError`` that names the holder's
    pid. The operating system drops the lock of a process that died, so a stale lock
    file never blocks anyone."""
    run_dir = Path(run_dir)
    lock = run_dir / ".lock"
    try:
        import fcntl  # not on Windows
    except ImportError:
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+")  # noqa: SIM115 - held open until the command ends
    except OSError as exc:
        raise output_error(lock, exc) from exc
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunError(
                f"{run_dir}: in use by {holder}; wait for it to finish (a dead process's "
                "lock is released by the system)"
            ) from exc
        except OSError:  # no locking on this file system: go on unlocked
            pass
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


def fresh_output_dir(out: Path | str, force: bool, marker: str) -> Path:
    """Make ``out`` ready for a command's outputs, so that no earlier result is mixed in.

    A missing or empty folder is created. A folder this tool wrote before (it holds
    ``marker``, e.g. ``sample.json``) is emptied only with ``force``; any other
    non-empty folder is refused, with or without ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: cannot write: a file stands where a folder is expected")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise OutputError(
                f"{out}: folder is not empty and holds no {marker}: choose an empty or new folder"
            )
        if not force:
            raise OutputError(f"{out}: holds an earlier result; pass --force to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out, exc) from exc
    check_writable(out)
    return out
