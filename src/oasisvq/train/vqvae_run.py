"""Train a VQ-VAE from a data root and a preset: what ``oasisvq train`` runs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from oasisvq.data.errors import ConfigError
from oasisvq.data.loader import DataOptions, get_split, load_splits
from oasisvq.model.presets import VQVAEConfig, get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.train import checkpoint
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import train_task
from oasisvq.train.history import History
from oasisvq.train.rundir import prepare_run_dir
from oasisvq.train.vqvae_task import VQVAETask


def _resumed_configs(
    out: Path, preset: str | None
) -> tuple[VQVAEConfig, TrainConfig, DataOptions, str | None]:
    saved = checkpoint.read_config(out)
    if saved.get("kind") != "vqvae":
        raise ConfigError(f"{out}: not a VQ-VAE run (kind={saved.get('kind')!r})")
    model_cfg = VQVAEConfig.from_dict(saved["model"])
    if preset is not None and preset != model_cfg.name:
        raise ConfigError(
            f"{out}: checkpoint was trained with preset {model_cfg.name!r}, not {preset!r}"
        )
    data = saved["data"]
    data["split_fractions"] = tuple(data["split_fractions"])
    return model_cfg, TrainConfig.from_dict(saved["train"]), DataOptions(**data), saved["data_root"]


def train_vqvae(
    data_root: str | None,
    out: str | Path,
    preset: str | None = "seed",
    epochs: int | None = None,
    resume: bool = False,
    force: bool = False,
    data_opts: DataOptions | None = None,
    model_overrides: dict | None = None,
    **train_overrides: object,
) -> History:
    """Train (or resume) a VQ-VAE run in ``out``. ``train_overrides`` are TrainConfig fields."""
    out = prepare_run_dir(Path(out), resume, force)
    has_ckpt = resume and checkpoint.latest(out) is not None
    if has_ckpt:
        model_cfg, train_cfg, data_opts, data_root = _resumed_configs(out, preset)
        if epochs is not None:
            train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    else:
        model_cfg = get_preset(preset or "seed", **(model_overrides or {}))
        set_ = {k: v for k, v in train_overrides.items() if v is not None}
        train_cfg = TrainConfig(
            epochs=epochs or model_cfg.default_epochs,
            batch_size=int(set_.pop("batch_size", model_cfg.batch_size)),
            lr=float(set_.pop("lr", model_cfg.lr)),
            weight_decay=model_cfg.weight_decay,
            adam_beta2=model_cfg.adam_beta2,
            **set_,
        )
        data_opts = data_opts or DataOptions(size=model_cfg.image_size)
    if data_opts.size != model_cfg.image_size:
        model_cfg = dataclasses.replace(model_cfg, image_size=data_opts.size)
    splits = load_splits(data_root, data_opts)
    train = get_split(splits, "train", data_root)
    val = splits.get("validate")
    for name, s in splits.items():
        if s.skipped:
            print(
                f"skipped {len(s.skipped)} bad file(s) in {name}:",
                *s.skipped,
                sep="\n  ",
                file=sys.stderr,
            )
    config = {
        "kind": "vqvae",
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": dataclasses.asdict(data_opts),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
    }

    def make_task() -> VQVAETask:
        return VQVAETask(VQVAE(model_cfg), train, val, train_cfg.batch_size)

    return train_task(make_task, train_cfg, out, config, resume=has_ckpt)
