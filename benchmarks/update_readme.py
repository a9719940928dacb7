"""Regenerate README.md's results table from the JSON files in benchmarks/results/.

    python benchmarks/update_readme.py

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is
replaced; every number in it comes from a JSON file written by a benchmark script.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from machine import cpu_label

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def quality_rows() -> list[str]:
    rows = [
        "| preset | grid | codes used | bits/image | SSIM | MS-SSIM | PSNR (dB) | epochs | s/epoch | data, split | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("quality-*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        rows.append(
            f"| `{r['preset']}` | {r['grid']}x{r['grid']} | {r['codes_used']}/{r['codebook_size']} | "
            f"{r['bits_per_image']:.0f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['ms_ssim_mean']:.3f} | "
            f"{r['psnr_mean']:.2f} | {r['epochs']} | {r['train_seconds_per_epoch']:.0f} | "
            f"{Path(r['data']).name}, {r['split']} ({r['n_images']}) | {cpu_label(m)}, {m['torch_threads']} threads |"
        )
    return rows


def prior_rows() -> list[str]:
    paths = sorted(RESULTS.glob("samples-*.json"))
    if not paths:
        return []
    rows = [
        "",
        "| VQ-VAE run | prior | NLL bits/image (uniform) | NN-SSIM | memorised | diversity samples / real | FD samples / real-vs-real | FD of a perfect prior |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        prior = f"`{r.get('prior', '?')}`"
        if r.get("condition"):
            prior += f" (conditioned on {', '.join(r['condition'])}; samples' conditions drawn from the training split)"
        if r.get("temperature", 1.0) != 1.0 or r.get("top_k"):
            prior += f", sampled at temperature {r['temperature']:g}" + (
                f", top-k {r['top_k']}" if r.get("top_k") else ""
            )
        if r.get("guidance", 1.0) != 1.0:
            prior += f", guidance {r['guidance']:g}"
        wrong = ""  # a conditional prior's NLL is given the true condition
        if "nll_bits_per_image_wrong_condition" in r:
            wrong = (
                f"; wrong condition {r['nll_bits_per_image_wrong_condition']:.1f}, "
                f"unknown {r['nll_bits_per_image_unknown_condition']:.1f}"
            )
        rows.append(
            f"| {_run_label(r)} | {prior} | {r['nll_bits_per_image']:.1f} ({r['uniform_bits_per_image']:.0f}){wrong} | "
            f"{r['nn_ssim_mean']:.3f} | {100 * r['memorised_share']:.1f}% | "
            f"{r['diversity_ms_ssim_samples']:.3f} / {r['diversity_ms_ssim_real']:.3f} | "
            f"{r['frechet_distance']:.2f} / {r['frechet_distance_real_vs_real']:.2f} | "
            f"{_fixed(r.get('frechet_distance_real_vs_train_reconstructions'))} |"
        )
    return rows


def _run_label(r: dict) -> str:
    """The VQ-VAE run of a prior result: its preset, and a decoder trained further."""
    label = f"`{r.get('preset', r.get('run', '?'))}`"
    if r.get("decoder_finetune"):
        label += f", decoder fine-tuned (adversarial weight {r['adversarial_weight']:g})"
    return label


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pm(std: float | None) -> str:
    return "" if std is None else f" ± {std:.3f}"


def sweep_rows() -> list[str]:
    rows: list[str] = []
    for path in sorted(RESULTS.glob("sweep-*.json")):
        r = json.loads(path.read_text())
        rows += [
            "",
            f"Sampling settings (`benchmarks/sampling_sweep.py`, {_run_label(r)} / `{r['prior']}`, "
            f"{r['split']}, {r['n_samples']} samples per draw, mean ± std over "
            f"{len(r.get('seeds', [0]))} draw(s) per row; real-vs-real FD "
            f"{r['frechet_distance_real_vs_real']:.3f}, real diversity {r['diversity_ms_ssim_real']:.3f}):",
            "",
            "| temperature | top-k | guidance | FD (x real-vs-real) | diversity samples (gap) "
            "| NN-SSIM | memorised |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            rows.append(
                f"| {row['temperature']:g} | {row['top_k'] or '-'} | {row.get('guidance', 1.0):g} "
                f"| {row['frechet_distance']:.3f}"
                f"{_pm(row.get('frechet_distance_std'))} ({row['fd_ratio']:.1f}x) | "
                f"{row['diversity_ms_ssim_samples']:.3f}{_pm(row.get('diversity_ms_ssim_samples_std'))} "
                f"({row['diversity_gap']:+.3f}) | {row['nn_ssim_mean']:.3f} | "
                f"{100 * row['memorised_share']:.1f}% |"
            )
    return rows


def blur_rows() -> list[str]:
    """The Frechet distance of blurred real slices (benchmarks/fd_blur.py): its scale."""
    rows: list[str] = []
    for path in sorted(RESULTS.glob("fd_blur-*.json")):
        r = json.loads(path.read_text())
        scale = r["frechet_distance_real_vs_real"]
        rows += [
            "",
            f"Blur alone (`benchmarks/fd_blur.py`, the `{r['preset']}` run's feature network, "
            f"{r['split']} against {r['n_reference']} training slices blurred by a Gaussian of "
            "sigma pixels):",
            "",
            "| sigma (px) | " + " | ".join(f"{row['sigma']:g}" for row in r["rows"]) + " |",
            "|---|" + "---|" * len(r["rows"]),
            "| FD (x real-vs-real) | "
            + " | ".join(
                f"{row['frechet_distance']:.3f} ({row['frechet_distance'] / scale:.1f}x)"
                for row in r["rows"]
            )
            + " |",
        ]
    return rows


def _smallest_reaching(rows: list[dict], ssim: float) -> dict | None:
    """The smallest setting of a codec sweep whose mean SSIM reaches ``ssim``."""
    ok = [r for r in rows if r["ssim_mean"] >= ssim]
    return min(ok, key=lambda r: r["bytes_mean"]) if ok else None


def rate_distortion_rows() -> list[str]:
    """Each VQ-VAE run of rate_distortion.json beside the smallest file every codec needs
    to reach its SSIM (the sweep's smallest setting with a mean SSIM at least as high)."""
    path = RESULTS / "rate_distortion.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    codecs = list(r["codecs"])
    size = r["data_options"]["size"]
    rows = [
        "",
        f"Rate-distortion (`benchmarks/rate_distortion.py`, {Path(str(r['data'])).name}, {r['split']}, "
        f"{r['n_images']} images at {size}x{size}; bytes are mean real file sizes, codecs at the smallest "
        "setting of the sweep whose mean SSIM reaches the run's):",
        "",
        "| VQ-VAE run | bytes/image (codes) | prior NLL bytes | SSIM | PSNR (dB) | "
        + " | ".join(f"{c} bytes at that SSIM (PSNR)" for c in codecs)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(codecs),
    ]
    for run in r["runs"]:
        nll = (
            ", ".join(
                f"{p['nll_bytes_per_image']:.1f} ({p['prior']})" for p in run.get("priors", [])
            )
            or "-"
        )
        cells = []
        for c in codecs:
            best = _smallest_reaching(r["codecs"][c], run["ssim_mean"])
            cells.append(
                "not reached"
                if best is None
                else f"{best['bytes_mean']:.0f} ({best['psnr_mean']:.1f})"
            )
        kept = run.get("kept_from")  # a row carried over from an earlier run of the benchmark
        label = f"`{run['preset']}`, {run['codebook_size']} codes" + (
            f" (measured earlier, {cpu_label(kept['machine'])})" if kept else ""
        )
        rows.append(
            f"| {label} | {run['bytes_per_image']:.0f} | {nll} | {run['ssim_mean']:.3f} | "
            f"{run['psnr_mean']:.2f} | " + " | ".join(cells) + " |"
        )
    smallest = []
    for c in codecs:
        low = min(r["codecs"][c], key=lambda x: x["bytes_mean"])
        smallest.append(f"{low['bytes_mean']:.0f} B at SSIM {low['ssim_mean']:.3f}")
    rows.append("| smallest file of each codec | | | | | " + " | ".join(smallest) + " |")
    m = r["machine"]
    rows.append(
        f"\nPillow {r['pillow']} (OpenJPEG {r['openjpeg']}, libwebp {r['libwebp']}), {cpu_label(m)}."
    )
    return rows


def _per_machine(stem: str, table: Callable[[dict], list[str]]) -> list[str]:
    """``table(result)`` for ``stem.json`` (the main machine), then for each
    ``stem-*.json`` (other machines); one table per machine."""
    main = RESULTS / f"{stem}.json"
    paths = ([main] if main.exists() else []) + sorted(RESULTS.glob(f"{stem}-*.json"))
    return [row for path in paths for row in table(json.loads(path.read_text()))]


def _where(m: dict, cuda: bool, threads: int) -> str:
    """``NVIDIA H200, torch 2.11.0+cu130 (host ...)`` for a CUDA result, else the CPU and
    threads."""
    if cuda:
        return f"{m['device']}, torch {m['torch']} (host {cpu_label(m)})"
    return f"{cpu_label(m)}, {threads} threads"


def throughput_rows() -> list[str]:
    """One table per throughput*.json, one row per measurement."""
    return _per_machine("throughput", _throughput_table)


def _throughput_table(r: dict) -> list[str]:
    rows = [
        "",
        f"Throughput (`benchmarks/throughput.py`, synthetic input, {r['timed_steps']} timed steps after "
        f"{r['warmup_steps']} warm-up, "
        f"{_where(r['machine'], 'cuda' in r['devices'], r['threads'])}):",
        "",
        "| preset | variant | device | train img/s | train img/CPU-s | inference img/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "error" in row:
            rows.append(
                f"| `{row['preset']}` | {row['variant']} | {row['device_type']} | failed | | | |"
            )
            continue
        tr, inf = row["train"], row["inference"]
        train = f"{tr['images_per_second']:.1f}" if tr.get("ok") else "failed"
        cpu = (
            f"{tr['images_per_cpu_second']:.1f}"
            if tr.get("ok") and tr.get("images_per_cpu_second")
            else "-"
        )
        infer = f"{inf['images_per_second']:.1f}" if inf.get("ok") else "failed"
        memory = f"{row['peak_rss_mib']:.0f}"
        if tr.get("cuda_peak_allocated_mib"):  # the GPU's own peak during training
            memory += f" (GPU {tr['cuda_peak_allocated_mib']:.0f})"
        rows.append(
            f"| `{row['preset']}` | {row['variant']} | {row['device']} | {train} | {cpu} | {infer} | "
            f"{memory} |"
        )
    return rows


def sampling_rows() -> list[str]:
    """One table per sampling_speed*.json, one row per prior, grid and mode."""
    return _per_machine("sampling_speed", _sampling_table)


def _sampling_table(r: dict) -> list[str]:
    m = r["machine"]
    rows = [
        "",
        f"Sampling (`benchmarks/sampling_speed.py`, codes drawn and decoded to 128x128 images, "
        f"{_where(m, r.get('device', 'cpu').startswith('cuda'), m['torch_threads'])}):",
        "",
        "| prior | grid, codes | mode | decoder | decoding | images | sampling s | decoding s | images/s | s per 1000 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["results"]:
        vq = f"`{x['vqvae']}`" if "vqvae" in x else "not recorded"
        rows.append(
            f"| `{x['prior']}` | {x['grid']}, {x['codebook_size']} | {x['mode']} | {vq} | {x['decode_precision']} | "
            f"{x['n']} | {x['sample_seconds']:.2f} | {x['decode_seconds']:.2f} | "
            f"{x['images_per_second']:.1f} | {x['seconds_per_1000']:.1f} |"
        )
    return rows


def monai_rows() -> list[str]:
    """Ours beside MONAI's VQ-VAE under the same budget, one pair of rows per monai_*.json."""
    paths = sorted(RESULTS.glob("monai_*.json"))
    if not paths:
        return []
    rows = [
        "",
        "Ours beside `monai.networks.nets.VQVAE` (`benchmarks/monai_peer.py`: same engine, loss, batches "
        "and budget; evaluated on the same split):",
        "",
        "| preset | budget | model | params | SSIM | PSNR (dB) | codes used | train img/s | peak RSS (MiB) | ours / MONAI | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for path in paths:
        r = json.loads(path.read_text())
        b = r["budget"]
        budget = (
            f"{b['minutes']:g} min"
            if "minutes" in b
            else f"{b['epochs']} epoch{'s' if b['epochs'] != 1 else ''}"
        )
        if r.get("train_limit"):
            budget += f", {r['train_limit']} images"
        beta2 = r["ours"]["train"].get("config", {}).get("adam_beta2")
        if beta2 is not None:  # both models of a pair train with the same optimiser settings
            budget += f", AdamW β2 {beta2:g}"
        for who in ("ours", "peer"):
            m = r[who]
            e, t = m["eval"], m["train"]
            # results written before --monai-shape existed used the preset's widths
            shape = r.get("monai_shape", "matched")
            label = "ours" if who == "ours" else f"MONAI {r['monai']}, {shape} widths"
            if who == "ours" and m.get("run"):
                label += " (trained run)"
            ratio = ""
            if who == "peer":
                q = r["ratios_ours_over_monai"]
                ratio = (
                    f"SSIM x{fmt(q.get('ssim'), '.3f')}, "
                    f"speed x{fmt(q.get('train_images_per_second'), '.2f')}"
                )
            rows.append(
                f"| `{r['preset']}` | {budget} | {label} | {m['params'] / 1e6:.2f} M | {e['ssim_mean']:.3f} | "
                f"{e['psnr_mean']:.2f} | {e['codes_used']}/{e['codebook_size']} | "
                f"{fmt(t.get('images_per_second'), '.1f')} | {fmt(t.get('peak_rss_mib'), '.0f')} | {ratio} | "
                f"{cpu_label(m['machine'])} |"
            )
    return rows


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    table = "\n".join(
        quality_rows()
        + prior_rows()
        + sweep_rows()
        + blur_rows()
        + rate_distortion_rows()
        + monai_rows()
        + throughput_rows()
        + sampling_rows()
    )
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
