"""What several commands share: option groups, checked number types, JSON printing."""

from __future__ import annotations

import argparse
import json

from oasisvq.cli import args as A
from oasisvq.data.options import DataOptions
from oasisvq.io import dumps
from oasisvq.prior.base import PRECISIONS, SamplingOptions
from oasisvq.prior.config import SEXES
from oasisvq.train import distributed as D

DEFAULTS = DataOptions()


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--size",
        type=A.size,
        default=None,
        help="square image size (default: the preset's)",
    )
    g.add_argument(
        "--fit",
        choices=["resize", "pad", "crop"],
        default="resize",
        help="how non-square images become square",
    )
    g.add_argument(
        "--axis",
        choices=["axial", "coronal", "sagittal"],
        default="axial",
        help="slicing axis for volumes",
    )
    g.add_argument("--mask", default=None, help="mask volumes for volume data: a folder, or 'auto'")
    g.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable files (listed) instead of stopping"
    )


def add_volume_options(p: argparse.ArgumentParser) -> None:
    """``--dims`` and the whole-volume options (after :func:`add_data_options`)."""
    g = p.add_argument_group("whole volumes (--dims 3)")
    g.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=2,
        help="2: volumes cut into slices (default), 3: whole volumes",
    )
    g.add_argument(
        "--voxel-mm",
        type=A.voxel_mm,
        default=None,
        metavar="MM",
        help=f"isotropic voxel size volumes are resampled to (default {DEFAULTS.voxel_mm:g})",
    )
    g.add_argument(
        "--volume-shape",
        type=A.volume_side,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="crop/pad size in voxels, RAS order (default "
        + " ".join(map(str, DEFAULTS.volume_shape))
        + ")",
    )


def data_options(args: argparse.Namespace, size: int = 128) -> DataOptions:
    volume = {
        "dims": getattr(args, "dims", DEFAULTS.dims),
        "voxel_mm": getattr(args, "voxel_mm", None) or DEFAULTS.voxel_mm,
        "volume_shape": tuple(getattr(args, "volume_shape", None) or DEFAULTS.volume_shape),
    }
    return DataOptions(
        size=args.size or size,
        fit=args.fit,
        axis=args.axis,
        mask=args.mask,
        skip_bad=args.skip_bad,
        **volume,
    )


def add_training_options(p: argparse.ArgumentParser, run: str) -> None:
    """The engine's options, shared by the training commands (``run``: what ``--resume``
    continues and ``--force`` replaces)."""
    p.add_argument("--batch-size", type=A.batch_size, default=None, help="global batch size")
    p.add_argument("--lr", type=A.lr, default=None, help="learning rate (> 0)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast precision"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=A.workers, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--checkpoint-every",
        type=A.checkpoint_every,
        default=0,
        help="also checkpoint every N steps",
    )
    p.add_argument("--resume", action="store_true", help=f"continue {run}")
    p.add_argument("--force", action="store_true", help=f"replace {run} (only a run of this tool)")


def engine_options(args: argparse.Namespace) -> dict:
    """TrainConfig fields set by :func:`add_training_options`."""
    return {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "amp": args.amp,
        "compile": args.compile,
        "num_workers": args.workers,
        "checkpoint_every": args.checkpoint_every,
    }


def add_sampling_options(p: argparse.ArgumentParser, precision: str) -> None:
    p.add_argument(
        "--prior", default=None, help="prior run in RUN/priors/ (default: the only or newest one)"
    )
    p.add_argument(
        "--temperature",
        type=A.temperature,
        default=1.0,
        help="softmax temperature (0 = most likely code)",
    )
    p.add_argument(
        "--top-k", type=A.top_k, default=None, help="draw among the K most likely codes only"
    )
    p.add_argument(
        "--guidance",
        type=A.guidance,
        default=1.0,
        help="classifier-free guidance of a conditional prior: 1 = none (default), 0 = the "
        "marginal, above 1 = further towards the condition",
    )
    p.add_argument(
        "--steps", type=A.count, default=None, help="parallel decoding steps (masked priors)"
    )
    p.add_argument(
        "--choice-temperature",
        type=A.temperature,
        default=None,
        help="masked priors: noise on the order cells are committed in (default: the prior's; "
        "0 = by confidence alone, large = random order)",
    )
    p.add_argument(
        "--seed",
        type=A.seed,
        default=0,
        help="random seed (same seed and batch size, same samples)",
    )
    p.add_argument(
        "--batch-size",
        type=A.batch_size,
        default=None,
        help="grids drawn at once (default: by grid size)",
    )
    p.add_argument(
        "--precision",
        default=precision,
        choices=PRECISIONS,
        help=f"decoder and maskgit precision (default {precision}; auto: bf16 where native)",
    )
    p.add_argument(
        "--texture",
        action="store_true",
        help="draw the run's scan texture onto each sample (fitted by `oasisvq fit-texture`; "
        "default: the decoder's smooth mean)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The options :func:`add_sampling_options` parsed (the dataclass's own field names)."""
    return SamplingOptions(**{f: getattr(args, f) for f in SamplingOptions.__dataclass_fields__})


def print_json(value: object) -> None:
    print(dumps(value))


def print_last_epoch(history) -> int:
    """Print the last epoch's validation scalars as JSON (rank 0 only); return 0."""
    last = history.rows[-1] if history.rows else {}
    if D.is_main():
        print(json.dumps({k: v for k, v in last.items() if k.startswith("val_") or k == "epoch"}))
    return 0


def add_condition_options(p: argparse.ArgumentParser) -> None:
    """The conditions a conditional prior draws with (unset: the marginal)."""
    p.add_argument(
        "--class", dest="class_name", default=None, help="class name (class-conditional prior)"
    )
    p.add_argument(
        "--position",
        "--slice-pos",
        dest="position",
        type=A.position,
        default=None,
        help="normalised slice position in [0, 1] (position-conditional prior)",
    )
    p.add_argument("--age", type=A.age, default=None, help="age in years (age-conditional prior)")
    p.add_argument(
        "--sex", choices=SEXES, type=str.upper, default=None, help="F or M (sex-conditional prior)"
    )


def conditions(args: argparse.Namespace) -> dict:
    return {"class": args.class_name, "position": args.position, "age": args.age, "sex": args.sex}
