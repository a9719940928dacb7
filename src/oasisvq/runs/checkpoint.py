"""Atomic checkpoints: ``RUN/checkpoints/<tag>/{model.safetensors, config.json, state.pt}``.

A checkpoint folder is written under a temporary name and renamed when complete;
``RUN/checkpoints/LATEST`` (replaced atomically) names the newest. A crash therefore
never leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from oasisvq.errors import ConfigError
from oasisvq.io import write_text


def save(
    run_dir: Path,
    tag: str,
    model: torch.nn.Module,
    config: dict,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``tag`` and point LATEST at it; keep the ``keep`` newest."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{tag}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(state, tmp / "state.pt")
    final = root / tag
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text(root / "LATEST", tag)
    write_text(run_dir / "config.json", json.dumps(config, indent=2))
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    tags = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=os.path.getmtime,
    )
    for old in tags[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "LATEST"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "model.safetensors").exists() else None


def read_config(run_dir: Path) -> dict:
    ckpt = latest(run_dir)
    if ckpt is None:
        raise ConfigError(f"{run_dir}: no checkpoint found (expected checkpoints/LATEST)")
    return json.loads((ckpt / "config.json").read_text())


def load_weights(ckpt: Path, model: torch.nn.Module, new: tuple[str, ...] = ()) -> None:
    """Load weights, with a clear error when they belong to another architecture.

    ``new``: prefixes of the model's parameters that the checkpoint may lack (modules
    added since, such as a discriminator); they keep their initial values."""
    tensors = load_file(str(ckpt / "model.safetensors"))
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
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
