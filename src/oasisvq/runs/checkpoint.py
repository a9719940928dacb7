"""Atomic checkpoints without pickle: ``RUN/checkpoints/<tag>/`` holds
``model.safetensors``, ``config.json`` and the training state as ``state.safetensors``
(its tensors) + ``state.json`` (everything else).

No file of a run is ever unpickled: a crafted file must not run code on ``--resume``
or while a run is read. Checkpoints of earlier versions (``state.pt``) load through
torch's restricted unpickler (tensors, plain Python values and numeric numpy arrays
only) or are refused with a ``RunError``.

A checkpoint folder is written under a temporary name and renamed when complete;
``RUN/checkpoints/LATEST`` (replaced atomically) names the newest. A crash therefore
never leaves a checkpoint that looks complete but is not, and LATEST is only a hint:
the newest complete folder (by its epoch and step) is what :func:`latest` returns.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as dump_safetensors

from oasisvq.errors import ConfigError, RunError
from oasisvq.io import dumps, output_error, read_json, write_json, write_text

WEIGHTS, CONFIG = "model.safetensors", "config.json"
STATE_TENSORS, STATE_JSON, LEGACY_STATE = "state.safetensors", "state.json", "state.pt"
STATE_FORMAT = "oasisvq-train-state/1"
# epoch-0003 (3 epochs done), epoch-0003-step-000020 (20 steps into epoch 3), each
# possibly with -r<n> (a second checkpoint of that point, written by a later process)
_TAG = re.compile(r"epoch-(\d+)(?:-step-(\d+))?(?:-r(\d+))?")


# ---------------------------------------------------------------------------- writing


def save(
    run_dir: Path,
    tag: str,
    model: torch.nn.Module,
    config: dict,
    state: dict[str, Any],
    keep: int = 2,
    written: list[str] | None = None,
) -> Path:
    """Write checkpoint ``tag`` and point LATEST at it.

    ``written``: the tags this process wrote so far, oldest first; the new one is
    appended and all but the ``keep`` newest of them are deleted. A checkpoint of
    another process is never deleted or replaced (None: nothing is pruned). An
    ``OSError`` (disk full, read-only) is an ``OutputError``; the previous checkpoint
    and LATEST are then left as they were."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    mine = written if written is not None else []
    tag = _free_tag(root, tag, mine)
    tmp, final = root / f".{tag}.partial", root / tag
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / WEIGHTS).write_bytes(dump_safetensors(tensors))
        (tmp / CONFIG).write_text(dumps(config) + "\n")
        _write_state(tmp, state)
        shutil.rmtree(final, ignore_errors=True)  # only one this process wrote (_free_tag)
        os.replace(tmp, final)
    except OSError as exc:
        raise output_error(exc.filename or tmp, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mine.append(tag)
    write_text(root / "LATEST", tag)
    write_json(run_dir / CONFIG, config)
    if written is not None:
        _prune(root, written, keep)
    return final


def _free_tag(root: Path, tag: str, mine: list[str]) -> str:
    """``tag``, or ``tag-r<n>`` when a folder of another process already has that name."""
    n, name = 1, tag
    while (root / name).exists() and name not in mine:
        n, name = n + 1, f"{tag}-r{n + 1}"
    return name


def _prune(root: Path, written: list[str], keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints of ``written`` (this process's)."""
    if keep <= 0:
        return
    while len(written) > keep:
        shutil.rmtree(root / written.pop(0), ignore_errors=True)


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors)
    (folder / STATE_TENSORS).write_bytes(dump_safetensors(tensors))
    (folder / STATE_JSON).write_text(dumps({"format": STATE_FORMAT, "state": tree}) + "\n")


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors and arrays moved to ``tensors`` under their path.

    Tuples, dicts with keys other than plain strings and non-finite floats get a
    one-key ``{"$...": ...}`` wrapper, so that they come back as they were."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return _encode_array(value, path, tensors)
    if isinstance(value, np.generic):
        return _encode(value.item(), path, tensors)
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        items = enumerate(value.items())
        return {"$items": [[k, _encode(v, f"{path}.{i}", tensors)] for i, (k, v) in items]}
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored without pickle")


def _encode_array(value: torch.Tensor | np.ndarray, path: str, tensors: dict) -> dict:
    if path in tensors:
        raise TypeError(f"{path}: two values would be stored under one name")
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"$tensor": path}
    if value.dtype.kind not in "biuf":
        raise TypeError(f"{path}: a {value.dtype} array cannot be stored without pickle")
    tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
    return {"$ndarray": path}


# ---------------------------------------------------------------------------- finding


def progress(ckpt: Path | str) -> tuple[int, int, int] | None:
    """``(epochs done, steps into the next epoch, rewrite)`` a checkpoint's tag names, or
    None for a name this module does not write."""
    m = _TAG.fullmatch(Path(ckpt).name)
    if m is None:
        return None
    epoch, step, again = int(m[1]), int(m[2] or 0), int(m[3] or 1)
    return (epoch - 1, step, again) if m[2] else (epoch, 0, again)


def candidates(run_dir: Path | str) -> list[Path]:
    """Complete checkpoint folders of a run (weights and config present), newest first:
    by epoch and step, then by write time."""
    root = Path(run_dir) / "checkpoints"
    try:
        folders = list(root.iterdir())
    except OSError:
        return []
    found = []
    for p in folders:
        key = progress(p)
        if key is None or not ((p / WEIGHTS).is_file() and (p / CONFIG).is_file()):
            continue
        with contextlib.suppress(OSError):  # pruned by a training while we look
            found.append((key, p.stat().st_mtime_ns, p))
    return [p for *_, p in sorted(found, reverse=True)]


def latest(run_dir: Path | str) -> Path | None:
    """The newest complete checkpoint of a run, whatever LATEST says (a run killed
    between writing a checkpoint and LATEST, or with LATEST lost, keeps its newest)."""
    found = candidates(run_dir)
    return found[0] if found else None


def read_config(run_dir: Path | str) -> dict:
    ckpt = latest(run_dir)
    if ckpt is None:
        raise ConfigError(f"{run_dir}: no checkpoint found (expected checkpoints/epoch-*)")
    return load_config(ckpt)


def load_config(ckpt: Path) -> dict:
    config = read_json(Path(ckpt) / CONFIG, "checkpoint config")
    if not isinstance(config, dict):
        raise RunError(f"{Path(ckpt) / CONFIG}: checkpoint config is damaged (not an object)")
    return config


# ---------------------------------------------------------------------------- reading


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``ckpt/model.safetensors``; a damaged file is a ``RunError``."""
    return read_safetensors(Path(ckpt) / WEIGHTS, "checkpoint weights")


def load_weights(ckpt: Path, model: torch.nn.Module, new: tuple[str, ...] = ()) -> None:
    """Load weights, with a clear error when they belong to another architecture.

    ``new``: prefixes of the model's parameters that the checkpoint may lack (modules
    added since, such as a discriminator); they keep their initial values."""
    tensors = read_weights(ckpt)
    own = model.state_dict()
    bad = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    missing = sorted(k for k in set(own) - set(tensors) if not k.startswith(new))
    unknown = sorted(set(tensors) - set(own))
    if bad or missing or unknown:
        detail = (
            f"shape mismatch for {bad[:3]}"
            if bad
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unknown[:3]}"
        )
        raise ConfigError(
            f"{ckpt}: checkpoint does not fit this model ({detail}); was it trained with another preset?"
        )
    model.load_state_dict(tensors, strict=not new)


def load_state(ckpt: Path) -> dict[str, Any]:
    """The training state of ``ckpt``: optimizer, scheduler, scaler, RNG states, counters,
    history. A missing, damaged or unsafe state is a ``RunError`` naming the file."""
    ckpt = Path(ckpt)
    if (ckpt / STATE_JSON).exists() or (ckpt / STATE_TENSORS).exists():
        meta = read_json(ckpt / STATE_JSON, "checkpoint state")
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            raise RunError(f"{ckpt / STATE_JSON}: not a training state of this version")
        tensors = read_safetensors(ckpt / STATE_TENSORS, "checkpoint state")
        state = _decode(meta.get("state"), tensors, ckpt / STATE_JSON)
    elif (ckpt / LEGACY_STATE).exists():
        state = _load_legacy(ckpt / LEGACY_STATE)
    else:
        raise RunError(f"{ckpt}: checkpoint has no training state ({STATE_JSON}); cannot resume")
    if not isinstance(state, dict):
        raise RunError(f"{ckpt}: checkpoint state is damaged (not a mapping)")
    return state


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path.read_bytes())
    except FileNotFoundError as exc:
        raise RunError(f"{path}: {what} is missing") from exc
    except (OSError, SafetensorError, ValueError) as exc:
        raise RunError(f"{path}: {what} is damaged ({_one_line(exc)})") from exc


def _decode(node: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, source) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and next(iter(node)).startswith("$"):
        ((kind, value),) = node.items()
        return _decode_wrapped(kind, value, tensors, source)
    return {k: _decode(v, tensors, source) for k, v in node.items()}


def _decode_wrapped(kind: str, value: Any, tensors: dict, source: Path) -> Any:
    try:
        if kind in ("$tensor", "$ndarray"):
            t = tensors[value]
            return t if kind == "$tensor" else t.numpy()
        if kind == "$float" and value in ("nan", "inf", "-inf"):
            return float(value)
        if kind == "$tuple":
            return tuple(_decode(v, tensors, source) for v in value)
        if kind == "$items":
            return {k: _decode(v, tensors, source) for k, v in value}
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{source}: checkpoint state is damaged ({kind} {exc})") from exc
    raise RunError(f"{source}: checkpoint state is damaged (unknown entry {kind})")


# What a state.pt of an earlier version holds besides tensors and plain values: numpy's
# RNG state, a uint32 array (numpy >= 2 and < 2 name its constructor differently).
# Rebuilding such an array calls no code of the file.
def _numpy_array_globals() -> list:
    from numpy._core.multiarray import _reconstruct  # private: only for earlier state.pt files

    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def _load_legacy(path: Path) -> dict[str, Any]:
    how = (
        "its weights still serve evaluate, reconstruct and sample; to train it further "
        "start a new run (--force), or finetune-decoder from it"
    )
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # anything the restricted unpickler refuses or cannot parse
        raise RunError(
            f"{path}: training state of an earlier version that cannot be read safely "
            f"({_one_line(exc)}); {how}"
        ) from exc
    if not _plain(state):
        raise RunError(f"{path}: training state holds values other than tensors; {how}")
    return state


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    return value is None or isinstance(value, bool | int | float | str | torch.Tensor)


def _one_line(exc: BaseException) -> str:
    """The telling line of a (possibly long, multi-line) exception message."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    telling = [s for s in lines if "GLOBAL" in s or "nsupported" in s]
    return (telling or lines or [type(exc).__name__])[0][:300]
