"""``oasisvq train-prior``, ``priors``, ``sample`` and ``evaluate-samples``.

    oasisvq train-prior RUN [--data DATA] --prior transformer [--epochs N] [--condition class]
    oasisvq priors [--json]
    oasisvq sample RUN --n 64 --out DIR [--prior NAME] [--temperature T] [--top-k K] [--seed S]
                       [--class NAME] [--slice-pos P] [--age A]
    oasisvq evaluate-samples RUN [--data DATA] [--prior NAME] --n 1000 --json OUT.json

Registered by ``oasisvq.cli`` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oasisvq.cli import add_training_options
from oasisvq.errors import ConfigError


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


# --------------------------------------------------------------------------- train-prior


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from oasisvq.cli import engine_options, print_last_epoch
    from oasisvq.prior.run import train_prior

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


def _train_prior_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--epochs", type=int, default=None, help="default: the prior's")
    p.add_argument(
        "--condition", default=None, help="comma-separated: class, position, age (default: none)"
    )
    p.add_argument(
        "--residual-blocks",
        type=int,
        default=None,
        help="PixelCNN residual blocks (table 4, code 2)",
    )
    p.add_argument(
        "--head-layers", type=int, default=None, help="PixelCNN masked 1x1 layers (table 4, code 2)"
    )
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="any PriorConfig field, e.g. d_model=192",
    )
    add_training_options(p, "RUN/priors/NAME")
    p.set_defaults(func=_cmd_train_prior)


# --------------------------------------------------------------------------- priors


def _cmd_priors(args: argparse.Namespace) -> int:
    import dataclasses

    from oasisvq.prior.registry import PRIORS, build_prior

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
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20}{'arch':<13}{'params 8x8':>12}{'params 32x32':>14}  description")
    for r in rows:
        p = r["params"]
        print(
            f"{r['name']:<20}{r['arch']:<13}{p['8x8_k16']:>12,}{p['32x32_k512']:>14,}  {r['description']}"
        )
    return 0


# --------------------------------------------------------------------------- sample


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    import oasisvq
    from oasisvq.evaluate.figures import samples_figure
    from oasisvq.sample.sampler import sample_images, to_uint8
    from oasisvq.train.distributed import pick_device

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: expected at least 1")
    model = oasisvq.load(args.run, pick_device(args.device))
    images, codes = sample_images(
        model,
        args.n,
        prior=args.prior,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        class_name=args.class_name,
        slice_pos=args.slice_pos,
        age=args.age,
        batch_size=args.batch_size,
        precision=args.precision,
        guidance=args.guidance,
    )
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    width = max(4, len(str(args.n - 1)))
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(out / "images" / f"sample_{i:0{width}d}.png")
    np.save(out / "codes.npy", codes.numpy().astype(np.int16 if codes.max() < 2**15 else np.int64))
    samples_figure(
        images,
        codes,
        out / "samples.png",
        n=min(args.n, 64),
        n_codes=model.config.quantizer.codebook_size,
    )
    info = {
        "run": str(args.run),
        "prior": args.prior or _prior_name(model),
        "n": args.n,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "guidance": args.guidance,
        "seed": args.seed,
        "class": args.class_name,
        "slice_pos": args.slice_pos,
        "age": args.age,
        "images": str(out / "images"),
        "codes": str(out / "codes.npy"),
        "figure": str(out / "samples.png"),
    }
    (out / "sample.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


def _prior_name(model) -> str:
    from oasisvq.prior.run import resolve_prior_name

    return resolve_prior_name(model.run_dir, None)


def _sampling_options(p: argparse.ArgumentParser, precision: str) -> None:
    p.add_argument(
        "--prior", default=None, help="prior run in RUN/priors/ (default: the only or newest one)"
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature (0 = most likely code)"
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="sample among the K most likely codes only"
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance of a conditional prior: 1 = none (default), 0 = the "
        "marginal, above 1 = further towards the condition",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed (same seed and batch size, same samples)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="grids drawn at once (default: by grid size)"
    )
    p.add_argument(
        "--precision",
        default=precision,
        choices=["auto", "fp32", "bf16"],
        help=f"decoding precision (default {precision}; auto: bf16 where native)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate new images from a run's prior",
        description="Writes OUT/images/sample_*.png, OUT/codes.npy (n, h, w), OUT/samples.png "
        "(images beside their codes) and OUT/sample.json.",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="output folder")
    _sampling_options(p, "auto")
    p.add_argument(
        "--class", dest="class_name", default=None, help="class name (class-conditional prior)"
    )
    p.add_argument(
        "--slice-pos", type=float, default=None, help="normalised slice position in [0, 1]"
    )
    p.add_argument("--age", type=float, default=None, help="age in years (age-conditional prior)")
    p.set_defaults(func=_cmd_sample)


# --------------------------------------------------------------------------- evaluate-samples


def _cmd_evaluate_samples(args: argparse.Namespace) -> int:
    from oasisvq.evaluate.samples import evaluate_samples

    summary = evaluate_samples(
        args.run,
        data_root=args.data,
        prior=args.prior,
        n=args.n,
        split=args.split,
        out_dir=args.out,
        json_path=args.json,
        temperature=args.temperature,
        top_k=args.top_k,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        feature_epochs=args.feature_epochs,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate_samples_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-samples",
        help="measure a prior and its samples: NLL, memorisation, diversity, Frechet distance",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    p.add_argument(
        "--data", default=None, help="data root (default: the one the run was trained on)"
    )
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--split", default=None, help="held-out split (default: test, else validate)")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    p.add_argument(
        "--out", default=None, help="folder for figures (default RUN/priors/NAME/eval-samples)"
    )
    p.add_argument(
        "--feature-epochs", type=int, default=6, help="epochs of the feature network (trained once)"
    )
    _sampling_options(p, "fp32")
    p.set_defaults(func=_cmd_evaluate_samples)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register train-prior, priors, sample and evaluate-samples."""
    _train_prior_parser(sub)
    p = sub.add_parser("priors", help="list the priors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_priors)
    _sample_parser(sub)
    _evaluate_samples_parser(sub)


if (
    __name__ == "__main__"
):  # pragma: no cover - `python -m oasisvq.cli_prior ...` before registration
    from oasisvq import cli

    _extra = cli._extra_commands
    if not any(f.__module__ == "oasisvq.cli_prior" for f in _extra()):
        cli._extra_commands = lambda: [*_extra(), add_parsers]
    sys.exit(cli.main())
