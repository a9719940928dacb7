"""Rate-distortion of classic image codecs beside the VQ-VAE runs; one JSON and one plot.

    python -m benchmarks.rate_distortion --data ../shared/data/alzheimer-mri --split validate \
        --runs runs/seed runs/compact --out benchmarks/results/rate_distortion.json \
        --plot benchmarks/results/rate_distortion.png

Every image of the split, at the size training used (the first run's ``DataOptions``;
``DataOptions(size=128)`` without runs), is encoded with

* Pillow JPEG (baseline, optimised Huffman tables; one channel, so no chroma subsampling)
  at qualities 1..95,
* Pillow WebP, lossy (``lossless=False``, ``method=6``) at qualities 0..100,
* Pillow JPEG 2000 (OpenJPEG; ``quality_mode="rates"``, one layer, irreversible 9/7
  wavelet, raw ``.j2k`` codestream without the JP2 boxes) at a sweep of compression
  ratios,

and decoded again. For every setting the JSON holds the mean real encoded size in
bytes per image and the mean SSIM / PSNR (``oasisvq.metrics``, the project
definitions) of the decoded image against the uint8 original. Lossless PNG and WebP
sizes are recorded as the lossless reference.

For every VQ-VAE run: SSIM / PSNR from ``evaluate_slices`` (reconstruction through
the quantizer, on the run's own data pipeline), and the size of its code grid at
``log2 K`` bits per cell (``bits_per_image / 8``: a fixed-length code, no header).
When the run holds trained priors (``RUN/priors/<name>/``), the prior's negative
log-likelihood of the split's code grids is the size an arithmetic coder driven by
that prior would reach (within a few bits per image); it is reported as a second
marker per prior. For a prior folder without a checkpoint, a ``RUN/priors/<name>/
eval-samples/metrics.json`` with ``nll_bits_per_image`` is used (it may be on another
split; the split is recorded). The empirical code entropy (a unigram bound) is recorded too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

import oasisvq
from benchmarks import plots
from benchmarks.machine import command_line, machine_info, save_result
from oasisvq import metrics
from oasisvq.data.loader import get_split, load_splits
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet
from oasisvq.evaluate.reconstruction import evaluate_slices
from oasisvq.runs import Run, checkpoint
from oasisvq.train.prior_task import nll_per_image

JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
# JPEG 2000 compression ratios (raw 8-bit size / target size; 16384 raw bytes at 128x128).
# OpenJPEG never goes below its ~140-byte main header plus a minimal packet (~180 bytes
# at 128x128), which ratio 100 already reaches: higher ratios give the same file.
J2K_RATES = (100, 90, 80, 70, 60, 50, 40, 32, 25, 20, 16, 12, 10, 8, 6, 4, 2.5)
METRIC_BATCH = 128


# ---------------------------------------------------------------- codecs
def _jpeg(quality: float) -> dict:
    return {"format": "JPEG", "quality": int(quality), "optimize": True}


def _webp(quality: float) -> dict:
    return {"format": "WEBP", "quality": int(quality), "lossless": False, "method": 6}


def _j2k(rate: float) -> dict:
    return {
        "format": "JPEG2000",
        "quality_mode": "rates",
        "quality_layers": [float(rate)],
        "irreversible": True,
        "no_jp2": True,
    }


CODECS: dict[str, tuple[str, tuple[float, ...], Callable[[float], dict]]] = {
    "JPEG": ("quality", JPEG_QUALITIES, _jpeg),
    "WebP": ("quality", WEBP_QUALITIES, _webp),
    "JPEG 2000": ("rate", J2K_RATES, _j2k),
}


def roundtrip(image: np.ndarray, options: dict) -> tuple[int, int, np.ndarray]:
    """Encode one ``(S, S) uint8`` image with Pillow ``options``; return the encoded size
    in bytes, the header's share of it (see ``header_bytes``) and the decoded
    ``(S, S) uint8`` image."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, **options)
    data = buf.getvalue()
    buf.seek(0)
    with Image.open(buf) as im:
        decoded = np.asarray(im.convert("L"), dtype=np.uint8)
    return len(data), header_bytes(data, options["format"]), decoded


def header_bytes(data: bytes, fmt: str) -> int:
    """Bytes before the entropy-coded data: JPEG up to the end of the SOS segment
    (quantisation and Huffman tables included), JPEG 2000 before the first SOT marker
    (OpenJPEG's "Created by OpenJPEG" comment included), WebP the RIFF, chunk and VP8
    frame headers (30 bytes for a lossy ``VP8 `` chunk). -1 when not found."""
    if fmt == "JPEG":
        i = data.find(b"\xff\xda")
        return -1 if i < 0 else i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    if fmt == "JPEG2000":
        return data.find(b"\xff\x90")
    if fmt == "WEBP":
        return 30 if data[12:16] == b"VP8 " else -1
    return -1


def quality(original: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image SSIM and PSNR of ``decoded`` vs ``original``, both ``(N, S, S) uint8``,
    in batches of ``METRIC_BATCH``. Returns two ``(N,)`` float64 arrays."""
    ssim, psnr = [], []
    with torch.no_grad():
        for s in range(0, len(original), METRIC_BATCH):
            x = torch.from_numpy(np.asarray(original[s : s + METRIC_BATCH], np.float32) / 255.0)[
                :, None
            ]
            y = torch.from_numpy(np.asarray(decoded[s : s + METRIC_BATCH], np.float32) / 255.0)[
                :, None
            ]
            ssim.append(metrics.ssim(y, x).double())
            psnr.append(metrics.psnr(y, x).double())
    return torch.cat(ssim).numpy(), torch.cat(psnr).numpy()


def sweep_codec(images: np.ndarray, name: str, workers: int = 1) -> list[dict]:
    """Every setting of codec ``name`` on ``images (N, S, S) uint8``, coded by ``workers``
    threads: one row each."""
    param, values, make = CODECS[name]
    rows = []
    for v in values:
        start = time.perf_counter()
        opts = make(v)
        sizes = np.empty(len(images), np.int64)
        headers = np.empty(len(images), np.int64)
        decoded = np.empty_like(np.asarray(images))
        with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while coding
            done = pool.map(roundtrip, list(images), [opts] * len(images))
            for i, (size, header, image) in enumerate(done):
                sizes[i], headers[i], decoded[i] = size, header, image
        ssim, psnr = quality(images, decoded)
        rows.append(
            {
                param: v,
                "bytes_mean": float(sizes.mean()),
                "bytes_std": float(sizes.std(ddof=1)) if len(sizes) > 1 else 0.0,
                "bytes_min": int(sizes.min()),
                "bytes_max": int(sizes.max()),
                "header_bytes_mean": float(headers.mean()),
                "bits_per_pixel": float(sizes.mean() * 8 / images[0].size),
                "ssim_mean": float(ssim.mean()),
                "ssim_std": float(ssim.std(ddof=1)) if len(ssim) > 1 else 0.0,
                "psnr_mean": float(psnr.mean()),
                "psnr_std": float(psnr.std(ddof=1)) if len(psnr) > 1 else 0.0,
                "seconds": time.perf_counter() - start,
                "pillow_options": {k: val for k, val in opts.items() if k != "format"},
            }
        )
        print(
            f"{name:10s} {param}={v:<6} {rows[-1]['bytes_mean']:8.1f} B  SSIM {rows[-1]['ssim_mean']:.4f}  "
            f"PSNR {rows[-1]['psnr_mean']:.2f}",
            file=sys.stderr,
        )
    return rows


def lossless_reference(images: np.ndarray, workers: int = 1) -> dict:
    """Mean bytes per image of lossless PNG (optimised) and lossless WebP."""
    out = {}
    for name, opts in (
        ("PNG", {"format": "PNG", "optimize": True}),
        ("WebP lossless", {"format": "WEBP", "lossless": True, "quality": 100, "method": 4}),
    ):

        def encoded_size(im: np.ndarray, opts: dict = opts) -> int:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(im), mode="L").save(buf, **opts)
            return buf.tell()

        with ThreadPoolExecutor(workers) as pool:
            sizes = list(pool.map(encoded_size, images))
        out[name] = {"bytes_mean": float(np.mean(sizes)), "pillow_options": opts}
    out["raw uint8"] = {"bytes_mean": float(images[0].size)}
    return out


# ---------------------------------------------------------------- VQ-VAE runs
def prior_nll(run: Run, slices: SliceSet, split: str) -> list[dict]:
    """NLL in bits per image of ``slices``' code grids under every trained prior of
    ``run`` (computed now), or from a saved samples evaluation for a prior folder without
    a checkpoint. An empty list when the run has no prior."""
    out: list[dict] = []
    names = run.priors()
    root = run.path / "priors"
    extra = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in names)
        if root.is_dir()
        else []
    )
    for name in names:
        saved = run.prior_config(name)
        nll = nll_per_image(run.prior(name), run.codes(split, slices), run.device)
        out.append(
            {
                "prior": name,
                "source": "computed",
                "split": split,
                "arch": saved["prior"].get("arch"),
                "checkpoint": checkpoint.latest(run.prior_dir(name)).name,
                "epochs_planned": saved.get("train", {}).get("epochs"),
                "nll_bits_per_image": float(nll.mean()),
                "nll_bits_per_image_std": float(nll.std(ddof=1)) if len(nll) > 1 else 0.0,
            }
        )
    for name in extra:  # no checkpoint: an earlier evaluate-samples result, if any
        saved_eval = root / name / "eval-samples" / "metrics.json"
        r = json.loads(saved_eval.read_text()) if saved_eval.exists() else {}
        if "nll_bits_per_image" not in r:
            print(f"{run.path}: prior {name!r} skipped (no checkpoint)", file=sys.stderr)
            continue
        split_of = r.get("setup", r).get("split")  # evaluate-samples' nested or earlier flat form
        out.append(
            {"prior": name, "source": str(saved_eval), "split": split_of}
            | {"nll_bits_per_image": float(r["nll_bits_per_image"])}
        )
    for row in out:
        row["nll_bytes_per_image"] = row["nll_bits_per_image"] / 8
    return out


def measure_run(path: str, data: str | None, split: str, device: str) -> dict:
    """Evaluate one VQ-VAE run on ``split`` of ``data`` (default: the run's data root)."""
    run = oasisvq.load(path, device)
    slices = run.split(split, data)
    start = time.perf_counter()
    summary, _ = evaluate_slices(run.vqvae, slices, run.device)
    seconds = time.perf_counter() - start
    cfg = run.config
    row = {
        "run": str(run.path),
        "label": f"VQ-VAE {cfg.name} ({cfg.grid}x{cfg.grid}, K={cfg.quantizer.codebook_size})",
        "data_options": run.data_options.to_dict(),
        **summary,
        "entropy_bytes_per_image": summary["entropy_bits_per_image"] / 8,
        "eval_seconds": seconds,
        "priors": prior_nll(run, slices, split),
    }
    print(
        f"{row['label']}: {row['bytes_per_image']:.0f} B  SSIM {row['ssim_mean']:.4f}  PSNR {row['psnr_mean']:.2f}"
        f"  priors: {[(p['prior'], round(p['nll_bytes_per_image'], 1)) for p in row['priors']]}",
        file=sys.stderr,
    )
    return row


def _variant(run: dict) -> tuple[str, int]:
    """A measured run's preset and codebook size (``--codebook-size`` makes variants)."""
    return run["preset"], run["codebook_size"]


# ---------------------------------------------------------------- plot
def plot(result: dict, path: Path) -> None:
    """SSIM against bytes per image (log x): a curve per codec, a marker per run (and prior)."""
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (name, rows), style in zip(result["codecs"].items(), ("o-", "s-", "^-"), strict=False):
        ax.plot(
            [r["bytes_mean"] for r in rows],
            [r["ssim_mean"] for r in rows],
            style,
            ms=4,
            lw=1.5,
            label=name,
        )
    markers = iter(("*", "D", "P", "X", "h", "p", "v", "<", ">"))
    for run in result["runs"]:
        m = next(markers, "*")
        line = ax.plot(
            run["bytes_per_image"], run["ssim_mean"], m, ms=13, mec="k", label=run["label"]
        )[0]
        ax.annotate(
            f"{run['preset']}\n{run['bytes_per_image']:.0f} B",
            (run["bytes_per_image"], run["ssim_mean"]),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=8,
        )
        for p, pm in zip(run["priors"], ("o", "s", "^", "v", "D", "P"), strict=False):
            b = p["nll_bytes_per_image"]
            ax.plot(
                b,
                run["ssim_mean"],
                pm,
                ms=9,
                mfc="none",
                mec=line.get_color(),
                mew=2,
                label=f"{run['preset']} + prior {p['prior']} (NLL)",
            )
            ax.annotate(
                "",
                (b, run["ssim_mean"]),
                (run["bytes_per_image"], run["ssim_mean"]),
                arrowprops={"arrowstyle": "->", "color": line.get_color(), "lw": 1},
            )
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (log scale)")
    ax.set_ylabel("SSIM (project definition)")
    n = result["n_images"]
    size = result["data_options"]["size"]
    ax.set_title(
        f"Rate-distortion on {Path(str(result['data'])).name} / {result['split']} ({n} images, {size}x{size})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    plots.save(fig, path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="data root (default: the first run's data root)")
    p.add_argument("--split", default="validate")
    p.add_argument("--runs", nargs="*", default=[], help="VQ-VAE run directories")
    p.add_argument("--size", type=int, default=None, help="image size without runs (default 128)")
    p.add_argument(
        "--limit", type=int, default=None, help="use only the first N images (quick checks)"
    )
    p.add_argument("--codecs", nargs="*", default=list(CODECS), choices=list(CODECS))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="coding threads"
    )
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--plot", default=None, help="PNG plot file")
    p.add_argument(
        "--keep-runs-from",
        default=None,
        metavar="JSON",
        help="an earlier result file (same data, split and images): its runs of presets not "
        "measured now are kept, each with the command and machine that measured it",
    )
    args = p.parse_args()
    command = command_line()
    if "JPEG 2000" in args.codecs and not features.check("jpg_2000"):
        print("this Pillow has no OpenJPEG (jpg_2000) support: JPEG 2000 skipped", file=sys.stderr)
        args.codecs = [c for c in args.codecs if c != "JPEG 2000"]

    started = time.perf_counter()
    if args.runs:
        first = oasisvq.load(args.runs[0])
        opts, trained_root = first.data_options, first.data_root
        if args.size is not None and args.size != opts.size:
            p.error(f"--size {args.size} differs from the run's image size {opts.size}")
    else:
        opts, trained_root = DataOptions(size=args.size or 128), None
    root = args.data if args.data is not None else trained_root
    slices = get_split(load_splits(root, opts), args.split, root)
    if args.limit:
        slices = slices.subset(np.arange(min(args.limit, len(slices))))
    images = np.ascontiguousarray(slices.images)
    kept = (
        kept_runs(Path(args.keep_runs_from), root, args.split, len(images))
        if args.keep_runs_from
        else []
    )  # checked before the sweep, so a mismatched file fails at once

    codecs = {name: sweep_codec(images, name, args.workers) for name in args.codecs}
    lossless = lossless_reference(images, args.workers)
    runs = []
    for run in args.runs:
        row = measure_run(run, root, args.split, args.device)
        if args.limit:
            row["note"] = "evaluated on the whole split (--limit applies to the codecs only)"
        runs.append(row)
    measured = {_variant(r) for r in runs}
    runs += [r for r in kept if _variant(r) not in measured]

    result = {
        "benchmark": "rate_distortion",
        "data": None if root is None else str(root),
        "split": args.split,
        "n_images": len(images),
        "data_options": opts.to_dict(),
        "pillow": Image.__version__,
        "openjpeg": features.version("jpg_2000"),
        "libwebp": features.version("webp"),
        "libjpeg": features.version("jpg"),
        "codecs": codecs,
        "lossless": lossless,
        "workers": args.workers,
        "runs": runs,
        "notes": [
            "codec bytes are real encoded file sizes (JPEG and WebP files with headers; JPEG 2000 "
            "as a raw .j2k codestream, no JP2 boxes)",
            "VQ-VAE bytes_per_image = grid cells * log2(K) / 8 (fixed-length codes, no header); "
            "prior NLL bytes are the ideal arithmetic-coding size under the prior",
            "SSIM and PSNR from oasisvq.metrics against the uint8 originals scaled to [0, 1]",
            "header_bytes_mean: the fixed cost inside bytes_mean (JPEG tables up to SOS, JPEG 2000 main "
            "header with OpenJPEG's comment, WebP RIFF/VP8 headers); it dominates near the VQ-VAE budgets",
            "JPEG SSIM is not monotonic in quality: at some qualities the DC quantisation decodes the "
            "black (0) background as 1, which the SSIM luminance term (C1 = 1e-4) penalises by ~13% "
            "per background window; PSNR stays monotonic",
        ],
        "seconds": None,
        "command": command,
        "machine": machine_info(),
    }
    result["seconds"] = time.perf_counter() - started
    save_result(result, args.out)
    if args.plot:
        plot(result, Path(args.plot))
    summary = {name: _smallest(rows) for name, rows in codecs.items()}
    print(json.dumps({"smallest": summary, "seconds": round(result["seconds"], 1)}))
    return 0


def kept_runs(path: Path, root: object, split: str, n_images: int) -> list[dict]:
    """The runs of the result file ``path``, each marked with the command and machine of
    that file (``kept_from``). The file must cover the same data root, split and number of
    images, else the rows would not be comparable."""
    old = json.loads(path.read_text())

    def where(data: object, split: object, n: object) -> tuple:  # (resolved root, split, n)
        return (None if data is None else str(Path(str(data)).resolve()), split, n)

    this = where(root, split, n_images)
    theirs = where(old.get("data"), old.get("split"), old.get("n_images"))
    if theirs != this:
        raise SystemExit(
            f"--keep-runs-from {path}: measured on (data, split, images) = {theirs}, not {this}"
        )
    source = {"command": old["command"], "machine": old["machine"]}
    return [{**run, "kept_from": run.get("kept_from", source)} for run in old["runs"]]


def _smallest(rows: list[dict]) -> dict:
    r = min(rows, key=lambda r: r["bytes_mean"])
    return {"bytes_mean": round(r["bytes_mean"], 1), "ssim_mean": round(r["ssim_mean"], 4)}


if __name__ == "__main__":
    sys.exit(main())
