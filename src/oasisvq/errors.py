"""Errors the user can fix, each turned into one line and an exit code by the CLI.

Every message names the file or value and the reason. The exit codes (also in
docs/commands.md):

| code | meaning |
|---|---|
| 0 | success |
| 1 | an unexpected error (a bug: the traceback is printed) |
| 2 | a bad argument, option value or configuration (``ConfigError``; argparse's own) |
| 3 | bad input data: unreadable file, wrong format, empty folder (``DataError``) |
| 4 | a run folder that cannot be used as asked: locked, damaged, not resumable (``RunError``) |
| 5 | an output that cannot be written: read-only, disk full, a file in the way (``OutputError``) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations


class OasisError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(OasisError, ValueError):
    """Bad option value: unknown preset, out-of-range number, incompatible checkpoint, ..."""

    exit_code = 2


class DataError(OasisError, ValueError):
    """Bad input data: unreadable file, wrong format, empty folder, NaNs, ..."""

    exit_code = 3

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RunError(OasisError):
    """A run folder that cannot be used as asked: locked by another process, damaged
    files, nothing to resume, not a run of this tool."""

    exit_code = 4


class OutputError(OasisError):
    """An output that cannot be written: read-only folder, full disk, a file in the way."""

    exit_code = 5


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a training, with what can be done now: the checkpoint a ``--resume``
    would continue from, or that there is none yet. The CLI prints ``str(exc)``."""

    exit_code = 130
