"""Training commands: ``train``, ``finetune-decoder`` and ``demo`` (the main job)."""

from __future__ import annotations

import argparse

from oasisvq.cli import args as A
from oasisvq.cli.common import (
    add_data_options,
    add_training_options,
    data_options,
    engine_options,
    print_last_epoch,
)
from oasisvq.pipeline import DemoSettings, run_demo
from oasisvq.train.vqvae_run import finetune_decoder, train_vqvae


def run_train(args: argparse.Namespace) -> int:
    history = train_vqvae(
        args.data,
        args.out,
        preset=args.preset,
        epochs=args.epochs,
        resume=args.resume,
        force=args.force,
        data_opts=data_options(args),
        model_overrides={"codebook_size": args.codebook_size},
        **engine_options(args),
    )
    return print_last_epoch(history)


def run_finetune_decoder(args: argparse.Namespace) -> int:
    priors = None if args.priors == "all" else [n for n in args.priors.split(",") if n != "none"]
    history = finetune_decoder(
        args.run,
        args.out,
        epochs=args.epochs,
        adversarial_weight=args.adversarial_weight,
        adversarial_start=args.adversarial_start,
        adversarial_adaptive=args.adversarial_adaptive,
        priors=priors,
        resume=args.resume,
        force=args.force,
        **engine_options(args),
    )
    return print_last_epoch(history)


def run_demo_command(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        preset=args.preset,
        epochs=args.epochs,
        prior=None if args.prior == "none" else args.prior,
        prior_epochs=args.prior_epochs,
        n_samples=args.n,
    )
    run_demo(args.out, args.data, settings, force=args.force)
    print(f"run, figures and samples in {args.out}")
    return 0


FINETUNE_HELP = "train a run's decoder further on fixed codes (adversarial term), in a new run"
FINETUNE_DESCRIPTION = (
    "Copy a VQ-VAE run's encoder and codebook (fixed), cached codes, feature "
    "network and priors to --out and train its decoder further, with the run's "
    "reconstruction loss plus a patch discriminator's: every image keeps its codes, so "
    "the priors stay valid and only how codes are drawn as images changes."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Register train, finetune-decoder and demo."""
    p = sub.add_parser("train", help="train a VQ-VAE")
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument(
        "--preset", default=None, help="model preset (see `oasisvq presets`; default seed)"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--epochs", type=A.epochs, default=None, help="default: the preset's default_epochs"
    )
    p.add_argument(
        "--codebook-size",
        type=A.codebook_size,
        default=None,
        help="override the preset's number of codes",
    )
    add_training_options(p, "the run in --out")
    add_data_options(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("finetune-decoder", help=FINETUNE_HELP, description=FINETUNE_DESCRIPTION)
    p.add_argument("run", help="VQ-VAE run directory written by `oasisvq train`")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--epochs", type=A.epochs, default=None, help="default 10")
    p.add_argument(
        "--adversarial-weight",
        type=A.weight,
        default=0.01,
        help="weight of the discriminator's term beside the reconstruction loss (0: none; "
        "default 0.01)",
    )
    p.add_argument(
        "--adversarial-start",
        type=A.checkpoint_every,
        default=260,
        help="optimizer steps the discriminator trains alone before its term joins the "
        "decoder's loss (default 260)",
    )
    p.add_argument(
        "--adversarial-adaptive",
        action="store_true",
        help="scale the term so that its gradient at the decoder's last layer is "
        "--adversarial-weight times the reconstruction loss's (VQGAN's adaptive weight)",
    )
    p.add_argument(
        "--priors", default="all", help="prior runs to copy: all, none or NAME,NAME (default all)"
    )
    add_training_options(p, "the run in --out")
    p.set_defaults(func=run_finetune_decoder)

    defaults = DemoSettings()
    p = sub.add_parser(
        "demo", help="the main job: train, evaluate, sample (built-in brain by default)"
    )
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--preset", default=defaults.preset)
    p.add_argument("--epochs", type=A.epochs, default=defaults.epochs)
    p.add_argument(
        "--prior", default=defaults.prior, help="prior to train after the VQ-VAE ('none' to skip)"
    )
    p.add_argument("--prior-epochs", type=A.epochs, default=defaults.prior_epochs)
    p.add_argument(
        "--n", type=A.count, default=defaults.n_samples, help="number of brains to sample"
    )
    p.add_argument("--force", action="store_true", help="replace an earlier demo run in --out")
    p.set_defaults(func=run_demo_command)
