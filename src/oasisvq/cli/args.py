"""Validators of numeric command-line options, checked before any work starts.

Each is an argparse ``type=`` function: ``p.add_argument("--lr", type=lr)``. A bad
value ends as argparse's one-line usage error (exit 2) with the accepted range:
``argument --lr: nan: expected a finite number > 0``. Outside argparse,
:func:`check` validates a value and names the option in the ``ConfigError``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from oasisvq.data.options import MIN_VOLUME_SIDE
from oasisvq.errors import ConfigError


class BadValue(ConfigError, argparse.ArgumentTypeError):
    """A value out of its option's range (argparse prints the message as it is)."""


def _integer(text: str, low: int, high: int | None, multiple: int = 1) -> int:
    expected = f"an integer {_range(low, high)}"
    if multiple > 1:
        expected = f"a multiple of {multiple} {_range(low, high)}"
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BadValue(f"{text}: expected {expected}") from None
    if value < low or (high is not None and value > high) or value % multiple:
        raise BadValue(f"{text}: expected {expected}")
    return value


def _number(text: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    bound = f"> {_show(low)}" if low_open else _range(low, high)
    expected = f"a finite number {bound}"
    try:
        value = float(str(text).strip())
    except ValueError:
        raise BadValue(f"{text}: expected {expected}") from None
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        raise BadValue(f"{text}: expected {expected}")
    return value


def _range(low: float, high: float | None) -> str:
    return f">= {_show(low)}" if high is None else f"from {_show(low)} to {_show(high)}"


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def size(text: str) -> int:
    """``--size``: the square image side; every preset halves it up to 4 times."""
    return _integer(text, 16, 4096, multiple=16)


def voxel_mm(text: str) -> float:
    """``--voxel-mm``: isotropic voxel size whole volumes are resampled to."""
    return _number(text, 0.0, low_open=True)


def volume_side(text: str) -> int:
    """One side of ``--volume-shape``, in voxels."""
    return _integer(text, MIN_VOLUME_SIDE, 4096)


def batch_size(text: str) -> int:
    return _integer(text, 1, 65536)


def lr(text: str) -> float:
    return _number(text, 0.0, low_open=True)


def codebook_size(text: str) -> int:
    return _integer(text, 2, 65536)


def epochs(text: str) -> int:
    """``--epochs``: at least 1 (an omitted option, not 0, means the preset's default)."""
    return _integer(text, 1, None)


def count(text: str) -> int:
    """``--n``: how many images to draw."""
    return _integer(text, 1, None)


def temperature(text: str) -> float:
    """``--temperature``: 0 takes the most likely code."""
    return _number(text, 0.0)


def top_k(text: str) -> int:
    return _integer(text, 1, None)


def guidance(text: str) -> float:
    """``--guidance``: 0 is the marginal, 1 no guidance, above 1 towards the condition."""
    return _number(text, 0.0, 100.0)


def seed(text: str) -> int:
    """``--seed``: numpy's generators take 32-bit seeds."""
    return _integer(text, 0, 2**32 - 1)


def workers(text: str) -> int:
    return _integer(text, 0, 256)


def checkpoint_every(text: str) -> int:
    """``--checkpoint-every``: steps between checkpoints inside an epoch (0: none)."""
    return _integer(text, 0, None)


def check(option: str, value: object, validate: Callable[[str], object]) -> object:
    """``validate(value)`` for a value given outside argparse (the Python API); a bad one
    is a ``ConfigError`` naming ``option``: ``--lr nan: expected a finite number > 0``."""
    try:
        return validate(str(value))
    except BadValue as exc:
        raise ConfigError(f"{option} {exc}") from None


def position(text: str) -> float:
    """``--position``: the normalised slice position in the volume."""
    return _number(text, 0.0, 1.0)


def age(text: str) -> float:
    """``--age``: years."""
    return _number(text, 0.0, 150.0)


def weight(text: str) -> float:
    """A loss weight: 0 switches the term off."""
    return _number(text, 0.0)
