"""Errors raised on bad input. Every message names the file or value and the reason."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: unreadable file, wrong format, empty folder, NaNs, ..."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(ValueError):
    """Bad option value: unknown preset, incompatible checkpoint, ..."""
