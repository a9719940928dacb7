"""Regenerate README.md's results table from the JSON files in benchmarks/results/.

    python benchmarks/update_readme.py

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is
replaced; every number in it comes from a JSON file written by a benchmark script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
            f"{Path(r['data']).name}, {r['split']} ({r['n_images']}) | {m['cpu']}, {m['torch_threads']} threads |"
        )
    return rows


def prior_rows() -> list[str]:
    paths = sorted(RESULTS.glob("samples-*.json"))
    if not paths:
        return []
    rows = [
        "",
        "| VQ-VAE run | prior | NLL bits/image (uniform) | NN-SSIM | memorised | diversity samples / real | FD samples / real-vs-real |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        rows.append(
            f"| `{r.get('preset', '?')}` | `{r.get('prior', '?')}` | {r['nll_bits_per_image']:.1f} ({r['uniform_bits_per_image']:.0f}) | "
            f"{r['nn_ssim_mean']:.3f} | {100 * r['memorised_share']:.1f}% | "
            f"{r['diversity_ms_ssim_samples']:.3f} / {r['diversity_ms_ssim_real']:.3f} | "
            f"{r['frechet_distance']:.2f} / {r['frechet_distance_real_vs_real']:.2f} |"
        )
    return rows


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    table = "\n".join(quality_rows() + prior_rows())
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
