"""Measuring commands: ``evaluate``, ``reconstruct``, ``evaluate-samples`` and
``fit-texture``."""

from __future__ import annotations

import argparse
from pathlib import Path

from oasisvq.cli import args as A
from oasisvq.cli.common import add_sampling_options, print_json, sampling_options
from oasisvq.errors import OutputError
from oasisvq.evaluate.reconstruction import evaluate_run, reconstruct_files
from oasisvq.evaluate.samples import SampleEvaluation, evaluate_samples
from oasisvq.evaluate.samples3d import VOLUME_EVALUATION, evaluate_volume_prior
from oasisvq.evaluate.texture import fit_run_texture
from oasisvq.io import run_lock
from oasisvq.runs import Run
from oasisvq.runs.texture import INFO, write_texture


def _json_path(args: argparse.Namespace) -> Path | None:
    return Path(args.json) if args.json else None


def run_evaluate(args: argparse.Namespace) -> int:
    run = Run.open(args.run, args.device)
    with run_lock(run.path):
        summary = evaluate_run(
            run,
            args.split,
            args.data,
            Path(args.out) if args.out else None,
            _json_path(args),
            args.batch_size,
            args.skip_bad,
        )
    print_json(summary)
    print(f"figures and per-image CSV in {args.out or run.path / f'eval-{args.split}'}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    run = Run.open(args.run, args.device)
    out = Path(args.out)
    mask = None if args.mask is None else Path(args.mask)
    summary = reconstruct_files(
        run, Path(args.input), out, _json_path(args), args.batch_size, args.skip_bad, mask
    )
    print_json(summary)
    print(f"reconstructions, codes, figures and per-image CSV in {out}")
    return 0


def run_evaluate_samples(args: argparse.Namespace) -> int:
    options = sampling_options(args)
    run = Run.open(args.run, args.device)
    settings = SampleEvaluation(
        n=args.n or (VOLUME_EVALUATION if run.dims == 3 else SampleEvaluation()).n,
        split=args.split,
        data_root=args.data,
        feature_epochs=args.feature_epochs,
    )
    measure = evaluate_volume_prior if run.dims == 3 else evaluate_samples
    with run_lock(run.path):
        summary = measure(run, args.prior, options, settings, args.out, args.json)
    print_json(summary)
    return 0


def run_fit_texture(args: argparse.Namespace) -> int:
    run = Run.open(args.run, args.device)
    if (run.path / INFO).exists() and not args.force:
        raise OutputError(f"{run.path / INFO}: a texture is fitted already; --force refits it")
    with run_lock(run.path):
        texture, info = fit_run_texture(run, args.data)
        write_texture(run.path, texture, {"vqvae": run.vqvae_fingerprint(), **info})
    print_json(info)
    print(f"texture in {run.path / INFO}; draw it with `oasisvq sample {run.path} --texture`")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `oasisvq train`")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    p.add_argument("--batch-size", type=A.batch_size, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable files (listed) instead of stopping"
    )


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default=None, help="data root (default: the one the run was trained on)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Register evaluate, reconstruct, evaluate-samples and fit-texture."""
    p = sub.add_parser(
        "evaluate", help="measure reconstructions of a split (through the quantizer)"
    )
    _common(p)
    _data(p)
    p.add_argument("--split", default="test")
    p.add_argument(
        "--out", default=None, help="folder for figures and CSV (default RUN/eval-SPLIT)"
    )
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("reconstruct", help="reconstruct an image or volume, or a folder of them")
    _common(p)
    p.add_argument("input", help="an image or volume file, or a folder of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mask",
        default=None,
        help="brain mask of the input volume (NIfTI or Analyze, nonzero = brain), applied "
        "as the data reader applies masks (runs of whole volumes, one input file)",
    )
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser(
        "evaluate-samples",
        help="measure a prior and its samples: NLL, memorisation, diversity, Frechet distance",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    _data(p)
    p.add_argument(
        "--n", type=A.count, default=None, help="number of samples (default 1000; 64 volumes)"
    )
    p.add_argument("--split", default=None, help="held-out split (default: test, else validate)")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    p.add_argument(
        "--out", default=None, help="folder for figures (default RUN/priors/NAME/eval-samples)"
    )
    p.add_argument(
        "--feature-epochs",
        type=A.epochs,
        default=None,
        help="epochs of the feature network (trained once; default 6, for volumes 30)",
    )
    add_sampling_options(p, "fp32")
    p.set_defaults(func=run_evaluate_samples)

    p = sub.add_parser(
        "fit-texture",
        help="fit the scan texture that --texture draws onto samples (the decoder's residual)",
    )
    p.add_argument("run", help="run directory written by `oasisvq train`")
    _data(p)
    p.add_argument("--force", action="store_true", help="refit a texture fitted before")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_fit_texture)
