"""``oasisvq`` command line: one sub-command per pipeline step."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from oasisvq.errors import ConfigError, DataError

Handler = Callable[[argparse.Namespace], int]


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--size", type=int, default=None, help="square image size (default: the preset's, 128)"
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


def data_options_from(args: argparse.Namespace, size: int = 128):
    from oasisvq.data.loader import DataOptions

    return DataOptions(
        size=args.size or size, fit=args.fit, axis=args.axis, mask=args.mask, skip_bad=args.skip_bad
    )


def engine_options(args: argparse.Namespace) -> dict:
    """TrainConfig fields shared by `train` and `train-prior`."""
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


def print_last_epoch(history) -> int:
    """Print the last epoch's validation scalars as JSON (rank 0 only); return 0."""
    from oasisvq.train.distributed import is_main

    last = history.rows[-1] if history.rows else {}
    if is_main():
        print(json.dumps({k: v for k, v in last.items() if k.startswith("val_") or k == "epoch"}))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from oasisvq.model.presets import PRESETS
    from oasisvq.model.vqvae import VQVAE, count_params

    rows = [
        {
            "name": c.name,
            "grid": c.grid,
            "codebook_size": c.quantizer.codebook_size,
            "bits_per_image": c.bits_per_image,
            "params": count_params(VQVAE(c)),
            "default_epochs": c.default_epochs,
            "description": c.description,
        }
        for c in PRESETS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'name':<10}{'grid':>6}{'codes':>7}{'bits/img':>10}{'params':>11}{'epochs':>8}  description"
    )
    for r in rows:
        print(
            f"{r['name']:<10}{r['grid']:>4}x{r['grid']:<1}{r['codebook_size']:>7}{r['bits_per_image']:>10.0f}"
            f"{r['params']:>11,}{r['default_epochs']:>8}  {r['description']}"
        )
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from oasisvq.data.loader import load_splits
    from oasisvq.data.stats import describe, format_stats

    splits = load_splits(args.data, data_options_from(args))
    stats = describe(splits)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from oasisvq.train.vqvae_run import train_vqvae

    history = train_vqvae(
        args.data,
        args.out,
        preset=args.preset,
        epochs=args.epochs,
        resume=args.resume,
        force=args.force,
        data_opts=data_options_from(args),
        model_overrides={"codebook_size": args.codebook_size},
        **engine_options(args),
    )
    return print_last_epoch(history)


def _cmd_demo(args: argparse.Namespace) -> int:
    from oasisvq.pipeline import run_demo

    prior = None if args.prior == "none" else args.prior
    run_demo(
        args.out, args.data, args.preset, args.epochs, prior, args.prior_epochs, args.n, args.force
    )
    print(f"run, figures and samples in {args.out}")
    return 0


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: train, evaluate, sample (built-in brain by default)"
    )
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--preset", default="compact")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--prior", default="transformer", help="prior to train after the VQ-VAE ('none' to skip)"
    )
    p.add_argument("--prior-epochs", type=int, default=30)
    p.add_argument("--n", type=int, default=16, help="number of brains to sample")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=_cmd_demo)


def add_training_options(p: argparse.ArgumentParser, run: str) -> None:
    """The engine's options, shared by `train` and `train-prior` (``run``: what
    ``--resume`` continues and ``--force`` overwrites)."""
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast precision"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help=f"continue {run}")
    p.add_argument("--force", action="store_true", help=f"overwrite {run}")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VQ-VAE")
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument(
        "--preset", default=None, help="model preset (see `oasisvq presets`; default seed)"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's default_epochs")
    p.add_argument(
        "--codebook-size", type=int, default=None, help="override the preset's number of codes"
    )
    add_training_options(p, "the run in --out")
    _data_options(p)
    p.set_defaults(func=_cmd_train)


def _cmd_finetune_decoder(args: argparse.Namespace) -> int:
    from oasisvq.train.vqvae_run import finetune_decoder

    priors = None if args.priors == "all" else [n for n in args.priors.split(",") if n != "none"]
    history = finetune_decoder(
        args.run,
        args.out,
        epochs=args.epochs,
        adversarial_weight=args.adversarial_weight,
        adversarial_start=args.adversarial_start,
        priors=priors,
        resume=args.resume,
        force=args.force,
        **engine_options(args),
    )
    return print_last_epoch(history)


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune-decoder",
        help="train a run's decoder further on fixed codes (adversarial term), in a new run",
        description="Copy a VQ-VAE run's encoder and codebook (fixed), cached codes, feature "
        "network and priors to --out and train its decoder further, with the run's "
        "reconstruction loss plus a patch discriminator's: every image keeps its codes, so "
        "the priors stay valid and only how codes are drawn as images changes.",
    )
    p.add_argument("run", help="VQ-VAE run directory written by `oasisvq train`")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--epochs", type=int, default=None, help="default 10")
    p.add_argument(
        "--adversarial-weight",
        type=float,
        default=0.01,
        help="weight of the discriminator's term beside the reconstruction loss (0: none; "
        "default 0.01)",
    )
    p.add_argument(
        "--adversarial-start",
        type=int,
        default=260,
        help="optimizer steps the discriminator trains alone before its term joins the "
        "decoder's loss (default 260)",
    )
    p.add_argument(
        "--priors", default="all", help="prior runs to copy: all, none or NAME,NAME (default all)"
    )
    add_training_options(p, "the run in --out")
    p.set_defaults(func=_cmd_finetune_decoder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oasisvq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the VQ-VAE presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("data", help="print statistics of a data root")
    p.add_argument("data", nargs="?", default=None, help="data root (default: the built-in brain)")
    p.add_argument("--json", action="store_true")
    _data_options(p)
    p.set_defaults(func=_cmd_data)

    _train_parser(sub)
    _finetune_parser(sub)
    _demo_parser(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands defined beside the code they run."""
    from oasisvq import cli_data, cli_eval, cli_prior, cli_studio

    return [
        cli_eval.add_parsers,
        cli_prior.add_parsers,
        cli_data.add_download_parser,
        cli_data.add_prepare_parser,
        cli_studio.add_parsers,
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, FileNotFoundError) as exc:
        print(f"oasisvq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
