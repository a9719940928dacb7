"""Train a prior over a VQ-VAE run's codes (what ``oasisvq train-prior`` runs).

A prior run lives inside the VQ-VAE run: ``RUN/priors/<name>/`` with its own
checkpoints (config ``{"kind": "prior", ...}``), history and curves; the code grids of
the splits are cached once in ``RUN/priors/codes_<split>.npz`` and shared by all priors.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from oasisvq.data.slices import SliceSet
from oasisvq.data.volumes3d import VolumeSet
from oasisvq.device import pick_device
from oasisvq.errors import ConfigError, RunError
from oasisvq.prior.base import Prior
from oasisvq.prior.config import PriorConfig, get_prior_config
from oasisvq.prior.data import CodeSet
from oasisvq.prior.registry import build_prior
from oasisvq.runs import Run, checkpoint, read_kind
from oasisvq.runs.rundir import open_run_dir
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import train_task
from oasisvq.train.history import History
from oasisvq.train.prior_task import PriorTask


def _fill_from_data(cfg: PriorConfig, run: Run, train: SliceSet | VolumeSet) -> PriorConfig:
    """Set what the VQ-VAE and the data fix: grid, codebook size, classes, age statistics."""
    fill: dict = {
        "codebook_size": run.config.quantizer.codebook_size,
        "grid": run.config.grid_shape,
    }
    volumes = isinstance(train, VolumeSet)
    if "sex" in cfg.condition and not (volumes and (train.sexes >= 0).any()):
        raise ConfigError(
            "--condition sex: the data gives no sex (volumes with a participants.csv sex column)"
        )
    if volumes and {"class", "position"} & set(cfg.condition):
        raise ConfigError("--condition class/position: volumes have neither; use age and sex")
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


VOLUME_BATCH = 8  # a prior's default batch on the code grids of whole volumes


def training_batch_size(cfg: PriorConfig, dims: int) -> int:
    """The named prior's batch, at most ``VOLUME_BATCH`` grids of a 3D run: a volume's
    grid holds thousands of cells, and a few hundred subjects in batches of 64 would
    leave the prior a handful of steps an epoch."""
    return min(cfg.batch_size, VOLUME_BATCH) if dims == 3 else cfg.batch_size


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
    run = Run.open(run_dir)
    # what --force must never delete: the data (not the VQ-VAE run, which holds the prior)
    root = data_root if data_root is not None else run.data_root
    inputs = [] if root is None else [Path(root)]
    with open_run_dir(
        run.prior_dir(name or prior), resume=resume, force=force, inputs=inputs
    ) as out:
        if resume:
            if checkpoint.latest(out) is None:
                raise RunError(
                    f"{out}: no readable checkpoint to resume; its files are left as they are"
                )
            saved = read_kind(out, "prior")
            cfg = PriorConfig.from_dict(saved["prior"])
            train_cfg = TrainConfig.from_dict(saved["train"])
            if epochs is not None:
                train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
            data_root = saved.get("data_root") if data_root is None else data_root
            if saved.get("vqvae", {}).get("checkpoint") != run.codes_fingerprint():
                print(
                    f"warning: the VQ-VAE of {run.path} changed since this prior started",
                    file=sys.stderr,
                )
        else:
            cfg = get_prior_config(prior, condition=condition, **(options or {}))
            set_ = {k: v for k, v in train_overrides.items() if v is not None}
            train_cfg = TrainConfig(
                epochs=cfg.epochs if epochs is None else epochs,
                batch_size=int(set_.pop("batch_size", training_batch_size(cfg, run.dims))),
                lr=float(set_.pop("lr", cfg.lr)),
                weight_decay=float(set_.pop("weight_decay", cfg.weight_decay)),
                **set_,
            )
            data_root = run.data_root if data_root is None else data_root
        splits = run.splits(data_root)
        train = run.split("train", data_root)
        val = splits.get("validate")
        if not resume:
            cfg = _fill_from_data(cfg, run, train)
        run.device = pick_device(train_cfg.device)
        train_codes = run.codes("train", train)
        if cfg.mirror:
            train_codes = add_mirrored(train_codes, run, train)
        val_codes = run.codes("validate", val) if val is not None else None
        config = {
            "kind": "prior",
            "prior": cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "vqvae": {"run": str(run.path.resolve()), "checkpoint": run.codes_fingerprint()},
            "data": run.data_options.to_dict(),
            "data_root": None if data_root is None else str(Path(data_root).resolve()),
        }
        run.__dict__.pop("vqvae", None)  # the codes are cached: free the VQ-VAE before training

        def make_task() -> PriorTask:
            return PriorTask(build_prior(cfg), train_codes, val_codes, train_cfg.batch_size)

        return train_task(make_task, train_cfg, out, config, resume=resume)


def add_mirrored(codes: CodeSet, run: Run, train: SliceSet | VolumeSet) -> CodeSet:
    """``codes`` followed by the codes of the left-right mirrored training images or
    volumes (cached as split "train-mirrored").

    A mirrored axial or coronal slice is a plausible brain in the other left-right
    convention, so this doubles the prior's training data (``mirror=true``; off by default,
    as samples then also come in both conventions). A mirrored sagittal slice faces the
    other way: for sagittal slices ``codes`` come back alone, and a line says so."""
    if isinstance(train, VolumeSet):  # RAS: the first voxel axis runs left to right
        flipped = dataclasses.replace(train, volumes=np.ascontiguousarray(train.volumes[:, ::-1]))
        return codes + run.codes("train-mirrored", flipped)
    if run.data_options.axis == "sagittal":
        print("mirror: sagittal slices are not mirrored; the prior trains on them as they are")
        return codes
    flipped = dataclasses.replace(train, images=np.ascontiguousarray(train.images[:, :, ::-1]))
    return codes + run.codes("train-mirrored", flipped)


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


def uniform_bits(cfg: PriorConfig) -> float:
    """The bound every prior must beat: ``cells * log2(K)`` bits per image."""
    return cfg.cells * math.log2(cfg.codebook_size)
