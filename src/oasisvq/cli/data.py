"""Data commands: ``presets``, ``data``, ``download`` and ``prepare``.

oasisvq presets [--json]
oasisvq data [ROOT] [--json] [--dims 3 [--voxel-mm MM] [--volume-shape X Y Z]]
oasisvq download oasis1 --to DIR [--discs 1-12] [--with-metadata]
oasisvq prepare oasis1 --from DIR --to OUT [--size 256] [--fractions 0.8,0.1,0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oasisvq.cli import args as A
from oasisvq.cli.common import add_data_options, add_volume_options, data_options, print_json
from oasisvq.data.download import (
    DATASETS,
    NRG_BASE_URL,
    OASIS_FILES_URL,
    download_oasis,
    parse_discs,
)
from oasisvq.data.loader import load_splits
from oasisvq.data.prepare import prepare_oasis1
from oasisvq.data.stats import describe, describe_volumes, format_stats, format_volume_stats
from oasisvq.data.volumes3d import load_volumes
from oasisvq.errors import ConfigError
from oasisvq.model.presets import PRESETS
from oasisvq.model.vqvae import VQVAE, count_params


def _fractions(text: str) -> tuple[float, float, float]:
    """argparse type for ``--fractions 0.8,0.1,0.1``."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers such as 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- download


def add_download_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``oasisvq download``."""
    p = subparsers.add_parser(
        "download",
        help="download the OASIS-1/OASIS-2 archives from their official source",
        description=(
            "Download the OASIS archives (resuming interrupted transfers, verifying checksums) "
            "and extract the images 'oasisvq prepare' needs. By downloading you accept the "
            "OASIS data use agreement (https://www.oasis-brains.org)."
        ),
    )
    p.add_argument(
        "dataset",
        choices=("oasis1", "oasis2"),
        help="OASIS-1 cross-sectional or OASIS-2 longitudinal",
    )
    p.add_argument(
        "--to", type=Path, required=True, metavar="DIR", help="folder for the archives and files"
    )
    p.add_argument(
        "--discs",
        default=None,
        metavar="LIST",
        help="discs (OASIS-1: 1-12) or parts (OASIS-2: 1-2) to fetch, e.g. '1-3,5' (default: all)",
    )
    p.add_argument(
        "--with-metadata",
        action="store_true",
        help="also fetch the clinical table (age, sex, MMSE, CDR per session)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"archive server or mirror (default {NRG_BASE_URL})",
    )
    p.add_argument(
        "--meta-url",
        default=None,
        metavar="URL",
        help=f"clinical table location (default {OASIS_FILES_URL})",
    )
    p.add_argument("--no-extract", action="store_true", help="only download the archives")
    p.add_argument(
        "--all-files",
        action="store_true",
        help="extract every file (raw scans, previews...) instead of only the T88 images and FSL segmentations",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="resume a dropped transfer this many times (default 3)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(
        func=run_download, interrupted="interrupted: run the same command again to resume"
    )
    return p


def run_download(args: argparse.Namespace) -> int:
    discs = None if args.discs is None else parse_discs(args.discs, DATASETS[args.dataset].count)
    files = download_oasis(
        args.dataset,
        args.to,
        discs,
        args.with_metadata,
        args.base_url,
        args.meta_url,
        extract=not args.no_extract,
        only_needed=not args.all_files,
        retries=max(0, args.retries),
        verbose=not args.quiet,
    )
    print(f"{len(files)} file(s) ready in {args.to}")
    return 0


# --------------------------------------------------------------------------- prepare


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``oasisvq prepare``."""
    p = subparsers.add_parser(
        "prepare",
        help="turn downloaded OASIS-1 sessions into a PNG slice dataset for 'oasisvq train --data'",
        description=(
            "Cut the atlas-registered, skull-stripped OASIS-1 images and their FSL tissue "
            "segmentations into axial PNG slices, split by subject, in the OASIS PNG release layout."
        ),
    )
    p.add_argument("dataset", choices=("oasis1",), help="only OASIS-1 has processed images")
    p.add_argument(
        "--from", dest="src", type=Path, required=True, metavar="DIR", help="the 'download' folder"
    )
    p.add_argument(
        "--to", dest="out", type=Path, required=True, metavar="OUT", help="folder to create"
    )
    p.add_argument(
        "--size", type=A.size, default=256, help="side of the square slices (default 256)"
    )
    p.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        metavar="T,V,S",
        help="train,validate,test shares of the subjects (default 0.8,0.1,0.1)",
    )
    p.add_argument("--seed", type=A.seed, default=0, help="seed of the subject split (default 0)")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="clinical table (default: found in --from)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable sessions instead of stopping"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare, interrupted="interrupted: nothing was written")
    return p


def run_prepare(args: argparse.Namespace) -> int:
    summary = prepare_oasis1(
        args.src,
        args.out,
        args.size,
        args.fractions,
        args.seed,
        args.force,
        labels=args.labels,
        skip_bad=args.skip_bad,
        verbose=not args.quiet,
    )
    subjects, slices = summary["subjects"], summary["slices"]
    counts = ", ".join(f"{s} {subjects[s]} subjects/{slices[s]} slices" for s in subjects)
    print(f"wrote {args.out}: {counts}")
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- presets, data


def run_presets(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": c.name,
            "dims": c.dims,
            # 2D: the side of the square grid; 3D: the three sizes of the volume's grid
            "grid": c.grid if c.dims == 2 else list(c.grid_shape),
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
        f"{'name':<12}{'grid':>9}{'codes':>7}{'bits/img':>10}{'params':>11}{'epochs':>8}  "
        "description (bits per slice in 2D, per volume in 3D)"
    )
    for r, c in zip(rows, PRESETS.values(), strict=True):
        grid = "x".join(map(str, c.grid_shape))
        print(
            f"{r['name']:<12}{grid:>9}{r['codebook_size']:>7}{r['bits_per_image']:>10.0f}"
            f"{r['params']:>11,}{r['default_epochs']:>8}  {r['description']}"
        )
    return 0


def run_data(args: argparse.Namespace) -> int:
    opts = data_options(args)
    if opts.dims == 3:
        if args.data is None:
            raise ConfigError("--dims 3 needs a data root of NIfTI/Analyze volumes")
        stats = describe_volumes(load_volumes(args.data, opts))
        text = format_volume_stats
    else:
        stats = describe(load_splits(args.data, opts))
        text = format_stats
    if args.json:
        print_json(stats)
    else:
        print(text(stats))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register presets, data, download and prepare."""
    p = sub.add_parser("presets", help="list the VQ-VAE presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_presets)

    p = sub.add_parser("data", help="print statistics of a data root")
    p.add_argument("data", nargs="?", default=None, help="data root (default: the built-in brain)")
    p.add_argument("--json", action="store_true")
    add_data_options(p)
    add_volume_options(p)
    p.set_defaults(func=run_data)

    add_download_parser(sub)
    add_prepare_parser(sub)
