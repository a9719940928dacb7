"""Train a prior over a VQ-VAE run's codes (what ``oasisvq train-prior`` runs), and load one.

A prior run lives inside the VQ-VAE run: ``RUN/priors/<name>/`` with its own
checkpoints (config ``{"kind": "prior", ...}``), history and curves; the code grids of
the splits are cached once in ``RUN/priors/codes_<split>.npz`` and shared by all priors.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

from oasisvq.data.loader import DataOptions, get_split, load_splits
from oasisvq.data.slices import SliceSet
from oasisvq.errors import ConfigError
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import Prior
from oasisvq.prior.data import CodeSet, cached_codes, codes_fingerprint
from oasisvq.prior.registry import PriorConfig, build_prior, get_prior_config
from oasisvq.prior.task import PriorTask
from oasisvq.train import checkpoint
from oasisvq.train import distributed as D
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import train_task
from oasisvq.train.history import History
from oasisvq.train.rundir import prepare_run_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def prior_dir(run_dir: str | Path, name: str) -> Path:
    if not _NAME.match(name):
        raise ConfigError(f"prior run name {name!r}: use letters, digits, '.', '_' and '-'")
    return Path(run_dir) / "priors" / name


def vqvae_config(run_dir: str | Path) -> dict:
    saved = checkpoint.read_config(Path(run_dir))
    if saved.get("kind") != "vqvae":
        raise ConfigError(f"{run_dir}: not a VQ-VAE run (kind={saved.get('kind')!r})")
    return saved


def data_options(saved: dict) -> DataOptions:
    d = dict(saved["data"])
    d["split_fractions"] = tuple(d["split_fractions"])
    return DataOptions(**d)


def _fill_from_data(cfg: PriorConfig, vq: dict, train: SliceSet) -> PriorConfig:
    """Set what the VQ-VAE and the data fix: grid, codebook size, classes, age statistics."""
    m = vq["model"]
    grid = m["image_size"] // 2 ** len(m["widths"])
    fill: dict = {"codebook_size": m["quantizer"]["codebook_size"], "grid": (grid, grid)}
    if "class" in cfg.condition:
        if not train.class_names or (train.classes < 0).all():
            raise ConfigError(
                "--condition class: the training split has no class labels (class folders)"
            )
        fill["class_names"] = tuple(train.class_names)
    if "position" in cfg.condition and not np.isfinite(train.positions).any():
        raise ConfigError(
            "--condition position: the data gives no slice positions (OASIS PNG slices or volumes do)"
        )
    if "age" in cfg.condition:
        ages = train.ages[np.isfinite(train.ages)]
        if len(ages) == 0:
            raise ConfigError(
                "--condition age: the data gives no ages (a participants.csv with an age column)"
            )
        fill["age_mean"] = float(ages.mean())
        fill["age_std"] = float(ages.std()) if len(ages) > 1 and ages.std() > 0 else 1.0
    return dataclasses.replace(cfg, **fill)


def train_prior(
    run_dir: str | Path,
    data_root: str | None = None,
    prior: str = "transformer",
    name: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    force: bool = False,
    condition: str | None = None,
    options: dict | None = None,
    **train_overrides: object,
) -> History:
    """Train (or resume) prior ``prior`` on the codes of the VQ-VAE run ``run_dir``.

    The run goes to ``RUN/priors/<name>`` (``name`` defaults to ``prior``). ``options``
    override PriorConfig fields; ``train_overrides`` are TrainConfig fields.
    """
    run_dir = Path(run_dir)
    vq = vqvae_config(run_dir)
    out = prepare_run_dir(prior_dir(run_dir, name or prior), resume, force)
    has_ckpt = resume and checkpoint.latest(out) is not None
    if has_ckpt:
        saved = checkpoint.read_config(out)
        if saved.get("kind") != "prior":
            raise ConfigError(f"{out}: not a prior run (kind={saved.get('kind')!r})")
        cfg = PriorConfig.from_dict(saved["prior"])
        train_cfg = TrainConfig.from_dict(saved["train"])
        if epochs is not None:
            train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
        data_root = saved.get("data_root") if data_root is None else data_root
        if saved.get("vqvae", {}).get("checkpoint") != codes_fingerprint(run_dir):
            print(
                f"warning: the VQ-VAE of {run_dir} changed since this prior started",
                file=sys.stderr,
            )
    else:
        cfg = get_prior_config(prior, condition=condition, **(options or {}))
        set_ = {k: v for k, v in train_overrides.items() if v is not None}
        train_cfg = TrainConfig(
            epochs=epochs or cfg.epochs,
            batch_size=int(set_.pop("batch_size", cfg.batch_size)),
            lr=float(set_.pop("lr", cfg.lr)),
            weight_decay=float(set_.pop("weight_decay", cfg.weight_decay)),
            **set_,
        )
        data_root = vq.get("data_root") if data_root is None else data_root
    opts = data_options(vq)
    splits = load_splits(data_root, opts)
    train = get_split(splits, "train", data_root)
    val = splits.get("validate")
    if not has_ckpt:
        cfg = _fill_from_data(cfg, vq, train)
    from oasisvq.api import load_vqvae

    device = D.pick_device(train_cfg.device)
    vqvae = load_vqvae(run_dir, device)
    train_codes = cached_codes(run_dir, "train", train, vqvae, device)
    if cfg.mirror:
        train_codes = add_mirrored(train_codes, run_dir, train, vqvae, device, opts.axis)
    val_codes = cached_codes(run_dir, "validate", val, vqvae, device) if val is not None else None
    del vqvae
    config = {
        "kind": "prior",
        "prior": cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "vqvae": {"run": str(run_dir.resolve()), "checkpoint": codes_fingerprint(run_dir)},
        "data": dataclasses.asdict(opts),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
    }

    def make_task() -> PriorTask:
        return PriorTask(build_prior(cfg), train_codes, val_codes, train_cfg.batch_size)

    return train_task(make_task, train_cfg, out, config, resume=has_ckpt)


def add_mirrored(
    codes: CodeSet,
    run_dir: Path,
    train: SliceSet,
    vqvae: VQVAE,
    device: torch.device,
    axis: str,
) -> CodeSet:
    """``codes`` followed by the codes of the left-right mirrored training images (cached
    as split "train-mirrored").

    A mirrored axial or coronal slice is a plausible brain in the other left-right
    convention, so this doubles the prior's training data (``mirror=true``; off by default,
    as samples then also come in both conventions). A mirrored sagittal slice faces the
    other way: for sagittal slices ``codes`` come back alone, and a line says so."""
    if axis == "sagittal":
        print("mirror: sagittal slices are not mirrored; the prior trains on them as they are")
        return codes
    flipped = dataclasses.replace(train, images=np.ascontiguousarray(train.images[:, :, ::-1]))
    return codes + cached_codes(run_dir, "train-mirrored", flipped, vqvae, device)


def train_prior_on_codes(
    out: str | Path,
    cfg: PriorConfig,
    train: CodeSet,
    val: CodeSet | None,
    train_cfg: TrainConfig,
    resume: bool = False,
) -> tuple[Prior, History]:
    """Train a prior on given code grids (no VQ-VAE involved): tests and experiments."""
    tasks: list[PriorTask] = []

    def make_task() -> PriorTask:
        tasks.append(PriorTask(build_prior(cfg), train, val, train_cfg.batch_size))
        return tasks[0]

    config = {"kind": "prior", "prior": cfg.to_dict(), "train": train_cfg.to_dict()}
    history = train_task(make_task, train_cfg, out, config, resume)
    return tasks[0].model, history


def trained_priors(run_dir: str | Path) -> list[str]:
    """Names of the prior runs of ``run_dir`` that have a checkpoint, oldest first."""
    root = Path(run_dir) / "priors"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint.latest(p) is not None]
    found.sort(key=lambda p: ((p / "checkpoints" / "LATEST").stat().st_mtime_ns, p.name))
    return [p.name for p in found]


def resolve_prior_name(run_dir: str | Path, name: str | None) -> str:
    """``name``, or the run's only prior, or the most recently trained one."""
    names = trained_priors(run_dir)
    if name is not None:
        if name not in names:
            known = ", ".join(names) or "none"
            raise ConfigError(
                f"{run_dir}: no trained prior {name!r} (trained: {known}); run `oasisvq train-prior`"
            )
        return name
    if not names:
        raise ConfigError(
            f"{run_dir}: no prior trained yet; run `oasisvq train-prior {run_dir} --prior NAME`"
        )
    return names[-1]


def load_prior(
    run_dir: str | Path, name: str | None = None, device: str | torch.device = "cpu"
) -> tuple[Prior, dict]:
    """The trained prior ``RUN/priors/<name>`` in eval mode, and its saved config."""
    name = resolve_prior_name(run_dir, name)
    out = prior_dir(run_dir, name)
    saved = checkpoint.read_config(out)
    if saved.get("kind") != "prior":
        raise ConfigError(f"{out}: not a prior run (kind={saved.get('kind')!r})")
    model = build_prior(PriorConfig.from_dict(saved["prior"]))
    checkpoint.load_weights(checkpoint.latest(out), model)
    if saved.get("vqvae", {}).get("checkpoint") not in (None, codes_fingerprint(Path(run_dir))):
        print(
            f"warning: prior {name!r} was trained on codes of another VQ-VAE checkpoint",
            file=sys.stderr,
        )
    return model.to(device).eval(), saved


def uniform_bits(cfg: PriorConfig) -> float:
    """The bound every prior must beat: ``cells * log2(K)`` bits per image."""
    return cfg.cells * math.log2(cfg.codebook_size)
