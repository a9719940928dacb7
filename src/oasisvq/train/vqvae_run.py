"""Train a VQ-VAE from a data root and a preset: what ``oasisvq train`` runs."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from oasisvq.data.loader import get_split, load_splits
from oasisvq.data.options import DataOptions
from oasisvq.errors import ConfigError
from oasisvq.model.presets import VQVAEConfig, get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.runs import Run, checkpoint, read_kind
from oasisvq.runs.rundir import FEATURES_DIRS, open_run_dir
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import train_task
from oasisvq.train.history import History
from oasisvq.train.vqvae_task import VQVAETask


def _resumed_configs(
    out: Path, preset: str | None
) -> tuple[VQVAEConfig, TrainConfig, DataOptions, str | None]:
    saved = read_kind(out, "vqvae")
    model_cfg = VQVAEConfig.from_dict(saved["model"])
    if preset is not None and preset != model_cfg.name:
        raise ConfigError(
            f"{out}: checkpoint was trained with preset {model_cfg.name!r}, not {preset!r}"
        )
    train_cfg = TrainConfig.from_dict(saved["train"])
    return model_cfg, train_cfg, DataOptions.from_dict(saved["data"]), saved["data_root"]


def _load_splits(data_root: str | None, data_opts: DataOptions):
    splits = load_splits(data_root, data_opts)
    for name, s in splits.items():
        if getattr(s, "skipped", None):
            print(
                f"skipped {len(s.skipped)} bad file(s) in {name}:",
                *s.skipped,
                sep="\n  ",
                file=sys.stderr,
            )
    return get_split(splits, "train", data_root), splits.get("validate")


def data_options_for(model_cfg: VQVAEConfig, given: DataOptions | None = None) -> DataOptions:
    """The data options of a new run: slices of the model's size, or for a 3D model whole
    volumes on its voxel grid (brain masks found automatically unless ``--mask`` says)."""
    if model_cfg.dims == 2:
        return given or DataOptions(size=model_cfg.image_size)
    given = given or DataOptions()
    return dataclasses.replace(
        given,
        dims=3,
        voxel_mm=model_cfg.voxel_mm,
        volume_shape=model_cfg.volume_shape,
        mask=given.mask or "auto",
    )


def _inputs(data_root: str | None) -> list[Path]:
    """What a run reads and ``--force`` must never delete: its data root."""
    return [] if data_root is None else [Path(data_root)]


def _run_config(
    model_cfg: VQVAEConfig,
    train_cfg: TrainConfig,
    data_opts: DataOptions,
    data_root: str | None,
    finetune: dict | None = None,
) -> dict:
    """What a VQ-VAE run saves with every checkpoint (``finetune``: where its codes come from)."""
    config = {
        "kind": "vqvae",
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": data_opts.to_dict(),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
    }
    return config if finetune is None else {**config, "finetune": finetune}


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
    with open_run_dir(out, resume=resume, force=force, inputs=_inputs(data_root)) as out:
        if resume:
            if "finetune" in checkpoint.read_config(
                out
            ):  # its encoder and codebook must stay fixed
                raise ConfigError(f"{out}: a finetune-decoder run; resume it with finetune-decoder")
            model_cfg, train_cfg, data_opts, data_root = _resumed_configs(out, preset)
            if epochs is not None:
                train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
        else:
            model_cfg = get_preset(preset or "seed", **(model_overrides or {}))
            set_ = {k: v for k, v in train_overrides.items() if v is not None}
            train_cfg = TrainConfig(
                epochs=model_cfg.default_epochs if epochs is None else epochs,
                batch_size=int(set_.pop("batch_size", model_cfg.batch_size)),
                lr=float(set_.pop("lr", model_cfg.lr)),
                weight_decay=model_cfg.weight_decay,
                adam_beta2=model_cfg.adam_beta2,
                **set_,
            )
            data_opts = data_options_for(model_cfg, data_opts)
            if model_cfg.dims == 3:  # conv3d weights have no channels_last layout
                train_cfg = dataclasses.replace(train_cfg, channels_last=False)
        if model_cfg.dims == 2 and data_opts.size != model_cfg.image_size:
            model_cfg = dataclasses.replace(model_cfg, image_size=data_opts.size)
        train, val = _load_splits(data_root, data_opts)
        config = _run_config(model_cfg, train_cfg, data_opts, data_root)

        def make_task() -> VQVAETask:
            return VQVAETask(VQVAE(model_cfg), train, val, train_cfg.batch_size)

        return train_task(make_task, train_cfg, out, config, resume=resume)


def finetune_decoder(
    parent: str | Path,
    out: str | Path,
    epochs: int | None = None,
    adversarial_weight: float = 0.01,
    adversarial_start: int = 260,
    adversarial_adaptive: bool = False,
    priors: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    **train_overrides: object,
) -> History:
    """Train the decoder of VQ-VAE run ``parent`` further, in a new run ``out``.

    The encoder and the codebook stay fixed, so every image keeps its codes: the cached
    codes, the feature network and the prior runs ``priors`` (default all) of ``parent``
    are copied to ``out`` and stay valid there, and only how codes are drawn as images
    changes. The loss is the parent's reconstruction loss plus, with
    ``adversarial_weight`` > 0, a patch discriminator's (model/discriminator.py), which
    trains alone for the first ``adversarial_start`` steps; with ``adversarial_adaptive``
    the weight is a ratio of gradients (``VQVAEConfig.adversarial_adaptive``).
    ``train_overrides`` are TrainConfig fields; the learning rate defaults to a tenth of
    the parent's.
    """
    parent = Path(parent)
    parent_run = None if resume else Run.open(parent)  # a missing parent creates nothing
    names = [] if parent_run is None else _prior_names(parent_run, priors)  # nor a wrong name
    data = None if parent_run is None else parent_run.data_root
    with open_run_dir(out, resume=resume, force=force, inputs=[parent, *_inputs(data)]) as out:
        if resume:
            model_cfg, train_cfg, data_opts, data_root = _resumed_configs(out, None)
            finetune = checkpoint.read_config(out).get("finetune")
            if finetune is None:
                raise ConfigError(f"{out}: not a finetune-decoder run")
            if epochs is not None:
                train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
            start = None
        else:
            model_cfg, parent_train, data_opts, data_root = _resumed_configs(parent, None)
            model_cfg = dataclasses.replace(
                model_cfg,
                adversarial_weight=adversarial_weight,
                adversarial_start=adversarial_start,
                adversarial_adaptive=adversarial_adaptive,
            )
            set_ = {k: v for k, v in train_overrides.items() if v is not None}
            train_cfg = dataclasses.replace(
                parent_train,
                epochs=10 if epochs is None else epochs,
                lr=float(set_.pop("lr", parent_train.lr / 10)),
                **set_,
            )
            finetune = {
                "from": str(parent.resolve()),
                "checkpoint": parent_run.vqvae_fingerprint(),
                "codes": parent_run.codes_fingerprint(),
                "trains": "decoder",
            }
            start = checkpoint.latest(parent)
            _share_codes_and_priors(parent, out, names)
        train, val = _load_splits(data_root, data_opts)
        config = _run_config(model_cfg, train_cfg, data_opts, data_root, finetune)

        def make_task() -> VQVAETask:
            model = VQVAE(model_cfg)
            if start is not None:
                checkpoint.load_weights(start, model, new=("discriminator.",))
            model.freeze_codes()
            return VQVAETask(model, train, val, train_cfg.batch_size)

        return train_task(make_task, train_cfg, out, config, resume=start is None)


def _prior_names(parent: Run, priors: list[str] | None) -> list[str]:
    """``priors`` (None: all of ``parent``'s trained priors), each checked to exist."""
    known = parent.priors()
    if unknown := [n for n in priors or [] if n not in known]:
        raise ConfigError(f"{parent.path}: no trained prior {unknown[0]!r} (it has {known})")
    return known if priors is None else priors


def _share_codes_and_priors(parent: Path, out: Path, names: list[str]) -> None:
    """Copy what depends on codes and data alone: ``priors/codes_*.npz``, the feature
    network (``features/``, or the age/sex network ``features3d/`` of a run of volumes)
    and the latest checkpoint of each prior run ``names``."""
    (out / "priors").mkdir(parents=True, exist_ok=True)
    for f in (parent / "priors").glob("codes_*.npz"):
        shutil.copy2(f, out / "priors" / f.name)
    for features in FEATURES_DIRS.values():
        if (parent / features).is_dir():
            shutil.copytree(parent / features, out / features, ignore=_locks)
    for name in names:
        src, dst = parent / "priors" / name, out / "priors" / name
        ckpt = checkpoint.latest(src)
        shutil.copytree(ckpt, dst / "checkpoints" / ckpt.name)
        shutil.copy2(src / "checkpoints" / "LATEST", dst / "checkpoints" / "LATEST")
        for f in ("config.json", "history.json", "history.csv", "curves.png"):
            if (src / f).exists():
                shutil.copy2(src / f, dst / f)


def _locks(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(".lock")]
