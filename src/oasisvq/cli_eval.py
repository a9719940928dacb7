"""``oasisvq evaluate`` and ``oasisvq reconstruct``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def _load(args: argparse.Namespace):
    from oasisvq.api import load_vqvae
    from oasisvq.train import checkpoint
    from oasisvq.train.distributed import pick_device

    device = pick_device(args.device)
    return load_vqvae(args.run, device), checkpoint.read_config(Path(args.run)), device


def _data_options(saved: dict):
    from oasisvq.data.loader import DataOptions

    d = dict(saved["data"])
    d["split_fractions"] = tuple(d["split_fractions"])
    return DataOptions(**d)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from oasisvq.data.loader import get_split, load_splits
    from oasisvq.evaluate.reconstruction import evaluate_slices, write_report

    model, saved, device = _load(args)
    root = args.data if args.data is not None else saved.get("data_root")
    opts = _data_options(saved)
    if args.skip_bad:
        opts.skip_bad = True
    slices = get_split(load_splits(root, opts), args.split, root)
    summary, r = evaluate_slices(model, slices, device, args.batch_size)
    summary.update(split=args.split, data=root or "built-in MNI152")
    out = Path(args.out) if args.out else Path(args.run) / f"eval-{args.split}"
    write_report(out, slices, summary, r, Path(args.json) if args.json else None)
    print(json.dumps(summary, indent=2))
    print(f"figures and per-image CSV in {out}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from oasisvq.data.tree import load_folder
    from oasisvq.evaluate.reconstruction import evaluate_slices, write_report

    model, saved, device = _load(args)
    opts = _data_options(saved)
    slices = load_folder(Path(args.input), opts.size, opts.fit, args.skip_bad)
    summary, r = evaluate_slices(model, slices, device, args.batch_size)
    summary["input"] = str(args.input)
    out = Path(args.out)
    write_report(out, slices, summary, r, Path(args.json) if args.json else None)
    (out / "images").mkdir(exist_ok=True)
    for src, img, codes in zip(slices.sources, r["recon"], r["codes"], strict=True):
        stem = Path(src).stem
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(
            out / "images" / f"{stem}_recon.png"
        )
        np.save(out / "images" / f"{stem}_codes.npy", codes)
    print(json.dumps(summary, indent=2))
    print(f"reconstructions, codes, figures and per-image CSV in {out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `oasisvq train`")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable files (listed) instead of stopping"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("reconstruct", help="reconstruct a folder of images or one image")
    _common(p)
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_reconstruct)
