"""The benchmarks import, and the results page is generated from the committed results."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_imports(name: str) -> None:
    importlib.import_module(f"benchmarks.{name}")


def test_the_results_page_names_a_machine_and_a_command_for_every_table(tmp_path: Path) -> None:
    doc = tmp_path / "results.md"
    tables = report.write(ROOT / "benchmarks" / "results", doc, None)
    text = doc.read_text()
    sections = text.split("\n## ")[1:]
    assert len(sections) == len(tables) >= 8
    for section in sections:
        assert "\nMachine: " in section, section[:200]
        assert "```bash\npython -m " in section, section[:200]
        assert "\n| --- |" in section, section[:200]
    assert "/work/" not in text and "shared/data" not in text


def test_the_readme_table_goes_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    report.write(ROOT / "benchmarks" / "results", tmp_path / "results.md", readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{report.END}\nafter\n")
    assert "old table" not in text and "| `compact` |" in text and "| `mid` |" in text
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers\n")
    report.write(ROOT / "benchmarks" / "results", tmp_path / "results.md", unmarked)
    assert unmarked.read_text() == "no markers\n"


def test_the_quality_table_names_each_quantizer(tmp_path: Path) -> None:
    import json

    row = {
        "preset": "compact",
        "grid": 8,
        "codebook_size": 16,
        "bytes_per_image": 32.0,
        "bits_per_image": 256.0,
        "codes_used": 16,
        "ssim_mean": 0.8,
        "ssim_std": 0.01,
        "ms_ssim_mean": 0.9,
        "psnr_mean": 21.0,
        "epochs": 3,
        "train_seconds_per_epoch": 20.0,
        "train_minutes_total": 1.0,
        "data": "~/data/alzheimer-mri",
        "split": "validate",
        "n_images": 9,
        "machine": {"cpu": "x", "cpu_count": 2, "torch_threads": 1, "torch": "2.13.0+cpu"},
        "command": "benchmarks/vqvae_quality.py",
    }
    fsq = {**row, "preset": "compact-fsq", "quantizer": {"kind": "fsq", "levels": [4, 4]}}
    (tmp_path / "quality-a.json").write_text(json.dumps(row))  # written before the field
    (tmp_path / "quality-b.json").write_text(json.dumps(fsq))
    (table,) = report.quality(tmp_path)
    lines = table.markdown().splitlines()
    assert "| quantizer |" in lines[[i for i, x in enumerate(lines) if x.startswith("|")][0]]
    assert any("| `compact` | VQ |" in x for x in lines)
    assert any("| `compact-fsq` | FSQ 4x4 |" in x for x in lines)


def test_a_masked_priors_label_names_its_steps_precision_and_choice_temperature() -> None:
    setup = {"prior": "maskgit", "prior_arch": "maskgit", "steps": 4}
    own = {"setup": {**setup, "sampling": {"precision": "bf16", "choice_temperature": None}}}
    assert report._prior_label(own) == "`maskgit`, 4 steps (bf16)"
    set_ = {"setup": {**setup, "sampling": {"precision": "fp32", "choice_temperature": 30.0}}}
    assert report._prior_label(set_) == "`maskgit`, 4 steps (fp32, choice temperature 30)"
    ar = {"setup": {"prior": "transformer", "prior_arch": "transformer", "sampling": {}}}
    assert report._prior_label(ar) == "`transformer`"


def test_the_3d_memorised_cell_shows_the_interval_and_the_real_shares_it_has() -> None:
    full = {
        "memorised_share": 5 / 64,
        "memorised_share_ci95": [0.0338, 0.1706],
        "memorised_share_of_real": 1 / 23,
        "memorised_share_recon_space": 0.0,
        "memorised_share_of_real_reconstructions": 11 / 23,
    }
    assert report._memorised3d({"memorisation": full}) == "7.8% [3.4-17.1] (4.3%; 0.0%; 47.8%)"
    older = {"memorised_share": 0.25, "memorised_share_recon_space": 0.0}
    assert report._memorised3d({"memorisation": older}) == "25.0% (0.0%)"
    assert report._memorised3d({"memorisation": {"memorised_share": 0.5}}) == "50.0%"


def test_the_texture_cell_says_off_or_how_many_textured_copies_are_caught() -> None:
    off = {"setup": {"sampling": {"guidance": 5.0}}, "memorisation": {}}
    assert report._texture(off) == "off"  # results from before the option read as off
    on = {
        "setup": {"sampling": {"texture": True}},
        "memorisation": {"memorised_share_of_textured_copies": 63 / 64},
    }
    assert report._texture(on) == "on (98.4%)"


def test_commands_are_shown_as_run_from_the_repository_root() -> None:
    shown = report.shown_command(
        "/usr/bin/python3 benchmarks/fd_blur.py --run /srv/runs/m1 --data ../x/data/oasis --n 2"
    )
    assert shown == "python -m benchmarks.fd_blur --run runs/m1 --data ~/data/oasis --n 2"


def test_sampling_speed_runs_and_times_a_masked_prior_in_each_precision(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "speed.json"
    args = ["--threads", "1", "--n8", "4", "--n8-naive", "2", "--skip32"]
    args += ["--priors", "transformer,maskgit", "--steps", "2", "--out", str(out)]
    subprocess.run([sys.executable, "-m", "benchmarks.sampling_speed", *args], cwd=ROOT, check=True)
    rows = json.loads(out.read_text())["results"]
    got = {(r["prior"], r["draw_precision"], r["decode_precision"]) for r in rows}
    assert got == {
        ("transformer", "fp32", "fp32"),
        ("transformer", "fp32", "bf16"),  # autoregressive priors draw in fp32 only
        ("maskgit", "fp32", "fp32"),
        ("maskgit", "bf16", "bf16"),
    }
    assert all(r["n"] == 4 and r["images_per_second"] > 0 for r in rows)
    assert (tmp_path / "speed.png").is_file()
