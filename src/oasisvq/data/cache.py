"""The decode-once cache of data: where it lives, how a data folder is fingerprinted,
and how a cache folder is written so that readers never see half of one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from oasisvq.io import exclusive


def cache_dir() -> Path:
    return Path(os.environ.get("OASISVQ_CACHE", Path.home() / ".cache" / "oasisvq"))


def fingerprint(h: hashlib._Hash, folder: Path) -> None:
    """Add the path, size and modification time of every file under ``folder`` to ``h``:
    a changed, touched, added or removed file changes the digest."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())


def cached_folder(folder: Path, write: Callable[[Path], object]) -> Path:
    """``folder``, written once by ``write(tmp)`` if it does not hold ``meta.json`` yet.

    ``write`` fills an empty temporary folder beside ``folder`` (flat: files only, the
    last one ``meta.json``), which is then renamed to ``folder``: readers see either no
    folder or a complete one. Processes that build the same folder at once (the
    torchrun processes of a node, before the process group exists) queue on a file
    lock; the first writes, the rest find it written."""
    if not (folder / "meta.json").exists():
        with exclusive(folder.with_name(folder.name + ".lock")):
            if not (folder / "meta.json").exists():
                tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
                _clear(tmp)
                tmp.mkdir(parents=True)
                try:
                    write(tmp)
                    os.replace(tmp, folder)
                except OSError:  # another process won the race: keep theirs
                    if not (folder / "meta.json").exists():
                        raise
                finally:
                    _clear(tmp)
    return folder


def _clear(tmp: Path) -> None:
    if tmp.is_dir():
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
