"""benchmarks/monai_peer.py on slices: a whole comparison of a 2D preset (both models in
their own process) on a tiny synthetic image tree."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import monai_peer


def test_the_2d_comparison_still_measures_slices(
    tiny_tree: Path, tmp_path: Path, benchmark_workers: None
) -> None:
    out = tmp_path / "monai2d.json"
    argv = ["--data", str(tiny_tree), "--preset", "seed", "--monai-shape", "matched"]
    argv += ["--epochs", "1", "--limit", "8", "--eval-limit", "4", "--threads", "1"]
    assert monai_peer.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dims"] == 2 and result["unit"] == "image"
    assert result["data_options"]["dims"] == 2 and result["data_options"]["size"] == 128
    for who in ("ours", "peer"):
        r = result[who]
        assert r["code_grid"] == [8, 8] and r["eval"]["n_images"] == 4
        assert r["train"]["images"] == 8 and r["train"]["config"]["channels_last"]
        assert "ssim_brain_mean" not in r["eval"]
    assert result["peer"]["monai_config"]["spatial_dims"] == 2
    assert result["peer"]["index_quantize_matches_adapter"] is True
    assert "ssim_brain" not in result["ratios_ours_over_monai"]
