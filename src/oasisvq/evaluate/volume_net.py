"""A 3D network trained on real brain volumes that measures generated ones: age, sex and
features for a Frechet distance.

A prior conditioned on age and sex is judged by asking an independent network what it
sees in the samples: a volume drawn "at age 80, female" should be predicted old and
female. :class:`VolumeNet` is trained, on the training split of the real volumes only,
to do both at once:

* **age**: regression in years (smooth L1 on the age standardised with the training
  split's mean and standard deviation; unknown ages are skipped);
* **sex**: a logit, male > 0 (binary cross-entropy; unknown sexes are skipped).

Its penultimate features (the channels after global average pooling) give the Frechet
distance between sample and real volumes (:func:`~oasisvq.evaluate.features.frechet_distance`).

It is small enough for a CPU (about 220k parameters): the input is average-pooled (2x
by default; volumes are large), then a stride-1 stem and a few stride-2 levels of 3D
convolutions with BatchNorm and SiLU, and a global average pool. Training flips volumes
left-right (x; brains are nearly symmetric) and shifts them by a voxel or two. The
weights of the epoch with the lowest validate age MAE are kept, since a few hundred
volumes overfit quickly. What the kept network achieves on the real validate volumes is
the ceiling a sample's numbers are read against (:func:`real_ceiling`).

Trained once and cached by :func:`volume_net` in ``CACHE/<key>/``: the engine's run
(checkpoints, history) and the kept network, ``best/model.safetensors`` with
``volume_net.json`` (architecture, options, validate numbers). Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as dump_safetensors
from torch import Tensor, nn
from torch.utils.data import Dataset

from oasisvq.errors import ConfigError, DataError, RunError
from oasisvq.io import atomic_write, exclusive, read_json, write_json
from oasisvq.runs import checkpoint
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import EpochStatsless, train_task

CHANNELS = (8, 16, 32, 64)
META = "volume_net.json"
BEST = "best"  # folder of the kept weights: BEST/model.safetensors, BEST/state.json
FORMAT = "oasisvq-volume-net/1"


@dataclass(frozen=True)
class VolumeArrays:
    """Volumes with their subjects' age and sex.

    volumes ``(N, X, Y, Z)`` uint8 (0..255 for [0, 1]) or float32 in [0, 1]; ages ``(N,)``
    float32 years (NaN unknown); sexes ``(N,)`` int8 (0 female, 1 male, -1 unknown)."""

    volumes: np.ndarray
    ages: np.ndarray
    sexes: np.ndarray


class Predictions(NamedTuple):
    """ages ``(N,)`` years, p_male ``(N,)`` in [0, 1], features ``(N, F)`` float64."""

    ages: np.ndarray
    p_male: np.ndarray
    features: np.ndarray


class VolumeNet(nn.Module):
    """``(B, 1, X, Y, Z)`` in [0, 1] -> ``(age (B,) years, sex_logit (B,) male > 0,
    features (B, F))`` with ``F = channels[-1]``.

    ``pool``: the input is average-pooled by this factor first. ``volume_shape``: the
    ``(X, Y, Z)`` it was trained on (checked by :func:`predict`; None: any). The age
    statistics of the training split are buffers, saved with the weights."""

    def __init__(
        self,
        channels: tuple[int, ...] = CHANNELS,
        pool: int = 2,
        dropout: float = 0.2,
        volume_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(channels) < 2 or pool < 1:
            raise ConfigError(
                f"VolumeNet channels {channels}, pool {pool}: need 2+ levels, pool >= 1"
            )
        self.channels, self.pool, self.dropout = tuple(channels), int(pool), float(dropout)
        self.volume_shape = None if volume_shape is None else tuple(int(s) for s in volume_shape)
        layers = _conv(1, channels[0], 1)
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += _conv(cin, cout, 2) + _conv(cout, cout, 1)
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.age = nn.Linear(channels[-1], 1)
        self.sex = nn.Linear(channels[-1], 1)
        self.register_buffer("age_mean", torch.tensor(0.0))
        self.register_buffer("age_std", torch.tensor(1.0))

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]

    def architecture(self) -> dict:
        """The constructor's arguments, as JSON."""
        shape = None if self.volume_shape is None else list(self.volume_shape)
        return {
            "channels": list(self.channels),
            "pool": self.pool,
            "dropout": self.dropout,
            "volume_shape": shape,
        }

    def features(self, x: Tensor) -> Tensor:
        if self.pool > 1:
            x = F.avg_pool3d(x, self.pool, ceil_mode=True)
        return self.body(x - 0.5)

    def heads(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(B, F)`` -> standardised age ``(B,)`` and sex logit ``(B,)``."""
        f = self.drop(f)
        return self.age(f)[:, 0], self.sex(f)[:, 0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.features(x)
        age, sex = self.heads(f)
        return age * self.age_std + self.age_mean, sex, f


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    # BatchNorm, not GroupNorm: GroupNorm normalises each volume by its own statistics,
    # which takes away the amounts age and sex show in (how much CSF, how large a brain);
    # with it, age was learnt late or not at all (5-fold r 0.52-0.70 against 0.75-0.77
    # on 143 IXI volumes, across seeds)
    return [nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout), nn.SiLU()]


# ---------------------------------------------------------------------------- data


def check_arrays(data: VolumeArrays, what: str) -> None:
    """Refuse arrays of the wrong shapes or values with a ``DataError`` naming ``what``."""
    v, ages, sexes = data.volumes, np.asarray(data.ages), np.asarray(data.sexes)
    if v.ndim != 4 or len(v) == 0:
        raise DataError(what, f"volumes of shape {v.shape}: expected (N, X, Y, Z) with N > 0")
    if v.dtype != np.uint8 and v.dtype.kind != "f":
        raise DataError(what, f"volumes of dtype {v.dtype}: expected uint8 or float in [0, 1]")
    if ages.shape != (len(v),) or sexes.shape != (len(v),):
        raise DataError(
            what, f"ages {ages.shape} and sexes {sexes.shape} do not match {len(v)} volumes"
        )
    if not np.isin(sexes, (-1, 0, 1)).all():
        raise DataError(what, "sexes must be 0 (female), 1 (male) or -1 (unknown)")


def _as_input(volumes: np.ndarray | Tensor) -> Tensor:
    """``(B, X, Y, Z)`` uint8 or float -> ``(B, 1, X, Y, Z)`` float32 in [0, 1]."""
    x = volumes if isinstance(volumes, Tensor) else torch.from_numpy(np.array(volumes))
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float())[:, None]


class LabelledVolumes(Dataset):
    """Item i: ``{"volume": (X, Y, Z) as stored, "age": float32 years, "sex": int64}``."""

    def __init__(self, data: VolumeArrays) -> None:
        self.d = data

    def __len__(self) -> int:
        return len(self.d.volumes)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "volume": torch.from_numpy(np.array(self.d.volumes[i], copy=True)),
            "age": torch.tensor(float(self.d.ages[i]), dtype=torch.float32),
            "sex": torch.tensor(int(self.d.sexes[i])),
        }


def augment(x: Tensor, shift: int = 2) -> Tensor:
    """Flip each volume of ``(B, 1, X, Y, Z)`` left-right (x) with probability 1/2 and
    roll it by up to ``shift`` voxels along each axis (the background is dark, so the
    wrap-around is harmless)."""
    out = []
    for v in x:
        if torch.rand(()) < 0.5:
            v = v.flip(1)
        if shift > 0:
            s = torch.randint(-shift, shift + 1, (3,)).tolist()
            v = torch.roll(v, s, dims=(1, 2, 3))
        out.append(v)
    return torch.stack(out)


# ---------------------------------------------------------------------------- training


class VolumeTask(EpochStatsless):
    """Age regression + sex classification, for the shared engine; keeps the weights of
    the best validate epoch in ``out/best/`` (see :meth:`validate`)."""

    def __init__(
        self,
        model: VolumeNet,
        train: VolumeArrays,
        val: VolumeArrays | None,
        out: Path,
        epochs_done: int,
        shift: int,
        batch_size: int,
    ) -> None:
        self.model, self.train_set, self.val = model, LabelledVolumes(train), val
        self.out, self.epoch, self.shift = out, epochs_done, shift
        self.batch_size = batch_size
        self.best = _best_so_far(out, epochs_done)

    def to_device(self, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        out = {k: v.to(device) for k, v in batch.items()}
        out["volume"] = _as_input(out["volume"])
        return out

    def _losses(self, model: nn.Module, x: Tensor, age: Tensor, sex: Tensor) -> dict[str, Tensor]:
        net = self.model  # its age statistics; ``model`` may be DDP-wrapped
        pred_age, logit, _ = model(x)
        losses: dict[str, Tensor] = {}
        known = torch.isfinite(age)
        if known.any():  # in training standard deviations: the loss does not depend on units
            z = (pred_age.float()[known] - net.age_mean) / net.age_std
            losses["age"] = F.smooth_l1_loss(z, (age[known] - net.age_mean) / net.age_std)
        known = sex >= 0
        if known.any():
            losses["sex"] = F.binary_cross_entropy_with_logits(
                logit.float()[known], sex[known].float()
            )
        return losses

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x = augment(batch["volume"], self.shift)
        losses = self._losses(model, x, batch["age"], batch["sex"])
        total = sum(losses.values(), torch.zeros((), device=x.device))
        return total, {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validate numbers of this epoch; the weights are kept when its score (age MAE;
        the sex loss when the validate volumes have no ages) is the best so far."""
        self.epoch += 1
        settle_norm_statistics(self.model, self.train_set.d.volumes, self.batch_size)
        row: dict[str, float] = {}
        if self.val is not None:
            pred = predict(model, self.val.volumes)
            row = {
                f"val_{k}": v for k, v in conditioning_fidelity(*_labels(self.val), pred).items()
            }
            row["val_sex_loss"] = _sex_loss(pred.p_male, self.val.sexes)
        score = row.get("val_age_mae", math.nan)
        score = score if math.isfinite(score) else row.get("val_sex_loss", math.nan)
        if not math.isfinite(score):
            score = -float(self.epoch)  # nothing to validate on: the latest epoch is kept
        if self.best is None or score < self.best["score"]:
            self.best = {"epoch": self.epoch, "score": score, **row}
            _write_best(self.out, self.model, self.best)
        return row


@torch.no_grad()
def settle_norm_statistics(net: VolumeNet, volumes: np.ndarray, batch_size: int) -> None:
    """Set the BatchNorm running statistics to the average over ``volumes (N, X, Y, Z)``
    of their batch statistics under the current weights; leaves ``net`` in eval mode.

    The running averages of training lag behind weights that move fast: the ages
    predicted in eval mode were then shifted by up to 25 years mid-training (their
    correlation unchanged), which would make the kept epoch a matter of luck."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    net.train()
    device = next(net.parameters()).device
    try:
        for s in range(0, len(volumes), batch_size):
            net.features(_as_input(volumes[s : s + batch_size]).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.eval()


def _labels(data: VolumeArrays) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(data.ages, np.float64), np.asarray(data.sexes)


def _sex_loss(p_male: np.ndarray, sexes: np.ndarray) -> float:
    known = np.asarray(sexes) >= 0
    if not known.any():
        return math.nan
    p = np.clip(p_male[known], 1e-7, 1 - 1e-7)
    y = np.asarray(sexes)[known]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _write_best(out: Path, model: VolumeNet, best: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    folder = out / BEST
    atomic_write(folder / checkpoint.WEIGHTS, lambda p: p.write_bytes(dump_safetensors(tensors)))
    write_json(folder / "state.json", best)


def _best_so_far(out: Path, epochs_done: int) -> dict | None:
    """The kept epoch of an interrupted training that continues after ``epochs_done``
    epochs; None when there is none (a newer one belongs to an epoch trained again)."""
    path = out / BEST / "state.json"
    if epochs_done == 0 or not path.is_file():
        return None
    best = read_json(path, "kept volume network state")
    if not isinstance(best, dict) or not 0 < best.get("epoch", 0) <= epochs_done:
        return None
    return best if isinstance(best.get("score"), int | float) else None


def train_volume_net(
    train: VolumeArrays,
    validate: VolumeArrays | None,
    out_dir: Path,
    *,
    epochs: int = 40,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    channels: tuple[int, ...] = CHANNELS,
    pool: int = 2,
    dropout: float = 0.2,
    shift: int = 2,
) -> VolumeNet:
    """Train a :class:`VolumeNet` on ``train`` with the shared engine in ``out_dir`` and
    return the weights of its best validate epoch, in eval mode on the CPU.

    An interrupted training in ``out_dir`` continues; one of other options is refused
    (``ConfigError``). Writes ``out_dir/volume_net.json`` last: its presence says done."""
    check_arrays(train, "training volumes")
    if validate is not None:
        check_arrays(validate, "validate volumes")
        if validate.volumes.shape[1:] != train.volumes.shape[1:]:
            raise DataError("validate volumes", "their shape differs from the training volumes'")
    out_dir = Path(out_dir)
    options = _options(locals())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights that do not depend on what ran before
        model = VolumeNet(channels, pool, dropout, train.volumes.shape[1:])
    _set_age_statistics(model, train.ages)
    steps = math.ceil(len(train.volumes) / batch_size)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=2 * steps,  # two epochs: a few hundred volumes make few steps
        seed=seed,
        device=device,
        amp="off",  # small 3D convolutions: no gain, and exact numbers on every CPU
        channels_last=False,  # 5D tensors
    )
    config = {"kind": "volume_net", "options": options, "train": cfg.to_dict()}
    ckpt = checkpoint.latest(out_dir)
    if ckpt is not None and checkpoint.load_config(ckpt).get("options") != options:
        raise ConfigError(f"{out_dir}: holds a volume network training of other options")
    done = 0 if ckpt is None else checkpoint.progress(ckpt)[0]
    train_task(
        lambda: VolumeTask(model, train, validate, out_dir, done, shift, batch_size),
        cfg,
        out_dir,
        config,
        "auto",
    )
    model = model.cpu().eval()
    best = read_json(out_dir / BEST / "state.json", "kept volume network state")
    checkpoint.load_weights(out_dir / BEST, model)
    meta = {"format": FORMAT, "architecture": model.architecture(), "options": options}
    meta["kept_epoch"] = best["epoch"]
    if validate is not None:
        meta["validate"] = real_ceiling(model, validate)
    write_json(out_dir / META, meta)
    return model


def _options(args: dict) -> dict:
    """The options that decide the trained weights, as JSON (device does not)."""
    names = ("epochs", "seed", "batch_size", "lr", "weight_decay", "channels", "pool", "dropout")
    out = {k: args[k] for k in (*names, "shift")}
    out["channels"] = list(out["channels"])
    return out


def _set_age_statistics(model: VolumeNet, ages: np.ndarray) -> None:
    known = np.asarray(ages, np.float64)
    known = known[np.isfinite(known)]
    if len(known):
        model.age_mean.fill_(float(known.mean()))
        model.age_std.fill_(max(float(known.std()), 1.0))  # one age, or all alike: no blow-up


def data_key(train: VolumeArrays, validate: VolumeArrays | None, options: dict) -> str:
    """A cache key: the fingerprint of the arrays (their bytes) and of ``options``."""
    h = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode())
    for data in (train, validate):
        if data is None:
            h.update(b"none")
            continue
        for a in (data.volumes, np.asarray(data.ages), np.asarray(data.sexes)):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
    return h.hexdigest()[:12]


def volume_net(
    train: VolumeArrays,
    validate: VolumeArrays | None,
    cache_dir: Path,
    key: str,
    **kw,
) -> VolumeNet:
    """The volume network of ``key`` (e.g. :func:`data_key`): loaded from
    ``cache_dir/key/`` or trained there first with :func:`train_volume_net` (``kw``: its
    options), in eval mode on the CPU.

    A lock file beside the folder makes concurrent callers wait for one training. A
    network trained, or being trained, with other options is trained again."""
    out = Path(cache_dir) / key
    wanted = _options({**train_volume_net.__kwdefaults__, **kw})
    with exclusive(out.with_name(out.name + ".lock")):
        if (out / META).is_file():
            meta = read_json(out / META, "volume network description")
            if isinstance(meta, dict) and meta.get("options") == wanted:
                return load_volume_net(out)
            shutil.rmtree(out)
        elif _options_of_training(out) not in (None, wanted):
            shutil.rmtree(out)
        return train_volume_net(train, validate, out, **kw)


def _options_of_training(out: Path) -> dict | None:
    """The options of the (interrupted) training in ``out``; None when there is none."""
    ckpt = checkpoint.latest(out)
    return None if ckpt is None else checkpoint.load_config(ckpt).get("options")


def load_volume_net(folder: Path) -> VolumeNet:
    """The network a finished :func:`train_volume_net` left in ``folder``, in eval mode."""
    meta = read_json(Path(folder) / META, "volume network description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunError(f"{Path(folder) / META}: not a volume network of this version")
    arch = meta["architecture"]
    net = VolumeNet(tuple(arch["channels"]), arch["pool"], arch["dropout"], arch["volume_shape"])
    checkpoint.load_weights(Path(folder) / BEST, net)
    return net.eval()


# ---------------------------------------------------------------------------- measuring


@torch.no_grad()
def predict(net: VolumeNet, volumes: np.ndarray | Tensor, batch_size: int = 4) -> Predictions:
    """Age, probability of male and features of volumes ``(N, X, Y, Z)`` (uint8, or
    float in [0, 1]), computed in batches of ``batch_size`` in the network's current mode
    (eval for deterministic numbers) on its device."""
    shape = tuple(volumes.shape[1:])
    if len(shape) != 3:
        raise DataError("volumes", f"shape {tuple(volumes.shape)}: expected (N, X, Y, Z)")
    own = net.module if hasattr(net, "module") else net
    if own.volume_shape is not None and shape != own.volume_shape:
        raise DataError(
            "volumes", f"of shape {shape}: the network was trained on {own.volume_shape}"
        )
    device = next(net.parameters()).device
    ages, p_male, feats = [], [], []
    for s in range(0, len(volumes), batch_size):
        age, logit, f = net(_as_input(volumes[s : s + batch_size]).to(device))
        ages.append(age.double().cpu())
        p_male.append(torch.sigmoid(logit.double()).cpu())
        feats.append(f.double().cpu())
    if not ages:
        empty = np.zeros(0)
        return Predictions(empty, empty, np.zeros((0, own.feature_dim)))
    return Predictions(*(torch.cat(v).numpy() for v in (ages, p_male, feats)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two ``(n,)`` arrays; NaN for fewer than 2 values or a constant one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def conditioning_fidelity(
    requested_ages: np.ndarray, requested_sexes: np.ndarray, pred: Predictions
) -> dict[str, float]:
    """How well predictions follow what was requested, ``(N,)`` each.

    ``age_correlation``: Pearson r of requested and predicted ages (NaN when fewer than
    two ages are known or either side is constant, e.g. all samples requested at one
    age); ``age_mae``: mean absolute error in years; ``sex_accuracy``: share of requested
    sexes predicted (p_male > 0.5). Unknown ages (NaN) and sexes (-1) are skipped; a
    measure with nothing to measure is NaN."""
    ages = np.asarray(requested_ages, np.float64)
    sexes = np.asarray(requested_sexes)
    if ages.shape != pred.ages.shape or sexes.shape != pred.p_male.shape:
        raise DataError(
            "requested conditions",
            f"ages {ages.shape} and sexes {sexes.shape} do not match {pred.ages.shape} predictions",
        )
    known = np.isfinite(ages) & np.isfinite(pred.ages)
    err = np.abs(ages[known] - pred.ages[known])
    sex_known = sexes >= 0
    hits = (pred.p_male[sex_known] > 0.5) == (sexes[sex_known] == 1)
    return {
        "age_correlation": pearson(ages[known], pred.ages[known]),
        "age_mae": float(err.mean()) if len(err) else math.nan,
        "sex_accuracy": float(hits.mean()) if len(hits) else math.nan,
    }


def real_ceiling(net: VolumeNet, validate: VolumeArrays, batch_size: int = 4) -> dict[str, float]:
    """What the network achieves on real volumes: ``age_mae_real``,
    ``age_correlation_real``, ``sex_accuracy_real`` (the best a sample set can expect).

    On the validate volumes that chose the kept epoch the numbers are a little
    optimistic; with a few dozen volumes they are also uncertain (r 0.7 on 23 volumes:
    95% interval about 0.4-0.86)."""
    was = net.training
    net.eval()
    try:
        pred = predict(net, validate.volumes, batch_size)
    finally:
        net.train(was)
    found = conditioning_fidelity(*_labels(validate), pred)
    return {f"{k}_real": v for k, v in found.items()}
