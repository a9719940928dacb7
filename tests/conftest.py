"""Shared fixtures: tiny synthetic brain-like image trees made by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def blob_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bright ellipse with darker inner blobs on black: crude 'brain slice', uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    a, b = rng.uniform(0.3, 0.45, 2)
    img = ((xx / a) ** 2 + (yy / b) ** 2 < 1).astype(np.float32) * 0.7
    for _ in range(3):
        cx, cy, r = rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), rng.uniform(0.03, 0.1)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform(0.1, 1.0)
    return (img * 255).astype(np.uint8)


def write_tree(
    root: Path, counts: dict[str, int], size: int = 40, classes=("A", "B"), seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for i in range(n):
            folder = root / split / classes[i % len(classes)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(blob_image(rng, size)).save(folder / f"img{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own decode cache, never the user's ~/.cache."""
    monkeypatch.setenv("OASISVQ_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def benchmark_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes a benchmark starts (``python -m benchmarks.NAME``) import the
    benchmarks and the package of this checkout."""
    root = Path(__file__).resolve().parents[1]
    paths = [str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", {"train": 24, "validate": 8, "test": 8})


@pytest.fixture(scope="session")
def toy_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of tests/trust_toy.py (3 epochs of 5 steps, a step checkpoint
    every 2 steps), for resumed runs to equal."""
    from trust_toy import train_toy

    run = tmp_path_factory.mktemp("toy") / "run"
    train_toy(run)
    return run


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models: as fast as two threads on an idle
    machine, and much faster when other processes share the cores (two threads then wait
    on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
