"""The command line keeps its promises on a run it did not write: no output is mixed with
an earlier one, a run in use is refused, and a reader that goes away ends no traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sample_cli import FAST, SMALL, _make_data, _make_vqvae_run

from oasisvq.cli import main
from oasisvq.io import run_lock


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQ-VAE run with a one-epoch transformer prior."""
    base = tmp_path_factory.mktemp("trust-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OASISVQ_CACHE", str(base / "cache"))
        _make_data(base / "data")
        _make_vqvae_run(base / "run", base / "data")
        argv = ["train-prior", str(base / "run"), "--epochs", "1", *SMALL, *FAST]
        assert main(argv) == 0
        yield base / "run"


def _sample(run: Path, out: Path, *extra: str) -> int:
    return main(["sample", str(run), "--n", *extra, "--out", str(out), "--device", "cpu"])


def test_a_second_sample_never_mixes_with_the_first(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert _sample(run, out, "3") == 0
    first = np.load(out / "codes.npy")
    # the same folder again: refused without --force, and nothing changed
    assert _sample(run, out, "2", "--seed", "5") == 5
    assert np.array_equal(np.load(out / "codes.npy"), first)
    # with --force the earlier sample is replaced whole: 2 images, not 2 new beside 3 old
    assert _sample(run, out, "2", "--seed", "5", "--force") == 0
    assert len(list((out / "images").glob("*.png"))) == 2
    assert len(np.load(out / "codes.npy")) == 2


def test_force_never_empties_a_folder_this_tool_did_not_write(run: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _sample(run, mine, "2", "--force") == 5
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_run_in_use_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with run_lock(run):  # another command writing into the run, here held by this process
        child = subprocess.run(
            [sys.executable, "-m", "oasisvq", "evaluate", str(run), "--split", "validate"],
            capture_output=True,
            text=True,
        )
    assert child.returncode == 4
    err = child.stderr.strip().splitlines()
    assert len(err) == 1 and "in use by pid" in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "R", "--out", "O", "--temperature", "nan"],
        ["sample", "R", "--out", "O", "--n", "0"],
        ["sample", "R", "--out", "O", "--top-k", "0"],
        ["train", "--out", "O", "--epochs", "0"],
        ["train", "--out", "O", "--lr", "inf"],
        ["train", "--out", "O", "--codebook-size", "1"],
    ],
)
def test_bad_numbers_stop_before_any_work(argv: list[str], tmp_path: Path, capsys) -> None:
    argv = [str(tmp_path / a) if a in ("R", "O") else a for a in argv]
    assert main(argv) == 2
    assert "expected" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "O").exists()


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """``oasisvq priors | head -1``: the reader left, so writing raises BrokenPipeError;
    the command ends with exit 0 and no traceback."""
    spare = os.open(os.devnull, os.O_WRONLY)

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return spare

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    try:
        assert main(["priors"]) == 0
    finally:
        os.close(spare)
