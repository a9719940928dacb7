"""Measuring commands: ``evaluate``, ``reconstruct`` and ``evaluate-samples``."""

from __future__ import annotations

import argparse
from pathlib import Path

from oasisvq.cli import args as A
from oasisvq.cli.common import add_sampling_options, print_json, sampling_options
from oasisvq.evaluate.reconstruction import evaluate_run, reconstruct_files
from oasisvq.evaluate.samples import SampleEvaluation, evaluate_samples
from oasisvq.evaluate.samples3d import VOLUME_EVALUATION, evaluate_volume_prior
from oasisvq.io import run_lock
from oasisvq.runs import Run


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `oasisvq train`")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    p.add_argument("--batch-size", type=A.batch_size, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable files (listed) instead of stopping"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Register evaluate, reconstruct and evaluate-samples."""
    p = sub.add_parser(
        "evaluate", help="measure reconstructions of a split (through the quantizer)"
    )
    _common(p)
    p.add_argument(
        "--data", default=None, help="data root (default: the one the run was trained on)"
    )
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
    p.add_argument(
        "--data", default=None, help="data root (default: the one the run was trained on)"
    )
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
