"""Prior commands: ``train-prior``, ``priors`` and ``sample``.

oasisvq train-prior RUN [--data DATA] --prior transformer [--epochs N] [--condition class]
oasisvq priors [--json]
oasisvq sample RUN --n 64 --out DIR [--prior NAME] [--temperature T] [--top-k K] [--seed S]
                   [--class NAME] [--position P] [--age A]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from oasisvq.cli import args as A
from oasisvq.cli.common import (
    add_condition_options,
    add_sampling_options,
    add_training_options,
    conditions,
    engine_options,
    print_json,
    print_last_epoch,
    sampling_options,
)
from oasisvq.prior.registry import PRIORS, build_prior
from oasisvq.runs import Run
from oasisvq.sample.inpaint import inpaint_files
from oasisvq.sample.write import sample_to_folder
from oasisvq.train.prior_run import train_prior


def _option(text: str) -> tuple[str, object]:
    """argparse type for ``--option KEY=VALUE`` (VALUE read as JSON when it parses)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. residual_blocks=2")
    key, value = text.split("=", 1)
    try:
        parsed: object = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return key.strip().replace("-", "_"), parsed


def run_train_prior(args: argparse.Namespace) -> int:
    options = dict(args.option or [])
    for key in ("residual_blocks", "head_layers"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    history = train_prior(
        args.run,
        args.data,
        prior=args.prior,
        name=args.name,
        epochs=args.epochs,
        resume=args.resume,
        force=args.force,
        condition=args.condition,
        options=options,
        **engine_options(args),
    )
    return print_last_epoch(history)


def run_priors(args: argparse.Namespace) -> int:
    rows = []
    for c in PRIORS.values():
        params = {}
        for label, k, g in (("8x8_k16", 16, 8), ("32x32_k512", 512, 32)):
            model = build_prior(dataclasses.replace(c, codebook_size=k, grid=(g, g)))
            params[label] = sum(p.numel() for p in model.parameters())
        rows.append(
            {"name": c.name, "description": c.description, "arch": c.arch, "params": params}
        )
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<20}{'arch':<13}{'params 8x8':>12}{'params 32x32':>14}  description")
    for r in rows:
        p = r["params"]
        print(
            f"{r['name']:<20}{r['arch']:<13}{p['8x8_k16']:>12,}{p['32x32_k512']:>14,}  {r['description']}"
        )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    options = sampling_options(args)  # checked before the run is opened
    run = Run.open(args.run, args.device)
    info = sample_to_folder(
        run, args.n, args.out, args.prior, options, conditions(args), args.force
    )
    print_json(info)
    return 0


def run_inpaint(args: argparse.Namespace) -> int:
    options = sampling_options(args)
    run = Run.open(args.run, args.device)
    info = inpaint_files(
        run,
        args.image,
        args.mask,
        args.out,
        args.prior,
        args.n,
        options,
        conditions(args),
        args.force,
    )
    print_json(info)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register train-prior, priors, sample and inpaint."""
    p = sub.add_parser(
        "train-prior",
        help="train a prior over a VQ-VAE run's code grids",
        description="Encode the training split once with the run's VQ-VAE (cached in RUN/priors/) and "
        "train a prior over the code grid with cross-entropy, in RUN/priors/NAME.",
    )
    p.add_argument("run", help="VQ-VAE run directory written by `oasisvq train`")
    p.add_argument(
        "--data", default=None, help="data root (default: the one the VQ-VAE was trained on)"
    )
    p.add_argument(
        "--prior", default="transformer", help="prior (see `oasisvq priors`; default transformer)"
    )
    p.add_argument(
        "--name", default=None, help="name of the prior run in RUN/priors/ (default: --prior)"
    )
    p.add_argument("--epochs", type=A.epochs, default=None, help="default: the prior's")
    p.add_argument(
        "--condition",
        default=None,
        help="comma-separated: class, position, age, sex (default: none)",
    )
    p.add_argument("--residual-blocks", type=A.count, default=None, help="PixelCNN residual blocks")
    p.add_argument("--head-layers", type=A.count, default=None, help="PixelCNN masked 1x1 layers")
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="any PriorConfig field, e.g. d_model=192",
    )
    add_training_options(p, "RUN/priors/NAME")
    p.set_defaults(func=run_train_prior)

    p = sub.add_parser("priors", help="list the priors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_priors)

    p = sub.add_parser(
        "sample",
        help="generate new images from a run's prior",
        description="Writes OUT/images/sample_*.png, OUT/codes.npy (n, h, w), OUT/samples.png "
        "(images beside their codes) and OUT/sample.json (the settings used).",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    p.add_argument("--n", type=A.count, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier sample folder in --out")
    add_sampling_options(p, "auto")
    add_condition_options(p)
    p.set_defaults(func=run_sample)

    p = sub.add_parser(
        "inpaint",
        help="resample the code cells of an image under a mask with a run's prior",
        description="Encode IMAGE with the run's VQ-VAE, resample the code cells that MASK "
        "covers (a cell whose pixels are more than half white) with the prior and decode. "
        "A masked prior (maskgit) draws them given every other cell; an autoregressive prior "
        "draws them in raster order given the cells before each, not those after. Writes "
        "DIR/input.png, reconstruction.png, inpainted_<i>.png, codes.npy (n, h, w), "
        "input_codes.npy, cell_mask.npy, the figure inpaint.png and inpaint.json.",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    p.add_argument("image", help="8-bit grayscale image (brought to the run's size and fit)")
    p.add_argument(
        "--mask", required=True, help="8-bit mask image of IMAGE's size: white = resample"
    )
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier inpainting in --out")
    p.add_argument("--n", type=A.count, default=4, help="number of inpaintings (default 4)")
    add_sampling_options(p, "fp32")
    add_condition_options(p)
    p.set_defaults(func=run_inpaint)
