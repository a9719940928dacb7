"""A run folder is replaced only when it is a run of this tool that overlaps no input,
resumed only when it has a checkpoint, written by one process at a time; outputs are
proven writable before work starts."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trust_toy import files

from oasisvq import io
from oasisvq.errors import ConfigError, OutputError, RunError
from oasisvq.runs.rundir import is_run_dir, open_run_dir, prepare_run_dir


def _run(folder: Path) -> Path:
    """A folder as a training of this tool leaves it."""
    (folder / "checkpoints" / "epoch-0001").mkdir(parents=True)
    (folder / "checkpoints" / "epoch-0001" / "model.safetensors").write_bytes(b"x")
    (folder / "checkpoints" / "epoch-0001" / "config.json").write_text("{}")
    (folder / "config.json").write_text('{"kind": "vqvae"}')
    (folder / "history.csv").write_text("epoch\n1\n")
    return folder


def _data(folder: Path) -> Path:
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.png").write_bytes(b"precious")
    return folder


def test_force_never_replaces_the_data_it_reads(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    before = files(data)
    for out in (data, tmp_path, data / "train"):  # is, holds, lies inside the data
        with pytest.raises(ConfigError, match="overlap the input"):
            with open_run_dir(out, force=True, inputs=[None, data]):
                pass
    assert files(data) == before
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    with pytest.raises(ConfigError, match="overlap"):  # also through a symbolic link
        prepare_run_dir(link, resume=False, force=True, inputs=[data])


def test_force_replaces_only_a_run_of_this_tool(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    (foreign / "config.json").write_text('{"kind": "something else"}')
    for force in (True, False):
        with pytest.raises(RunError, match="not a run of oasisvq"):
            with open_run_dir(foreign, force=force):
                pass
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert not (foreign / ".lock").exists()  # refused before anything was created

    run = _run(tmp_path / "run")
    (run / "elsewhere").symlink_to(foreign, target_is_directory=True)
    with pytest.raises(ConfigError, match="--force"):
        with open_run_dir(run):
            pass
    with open_run_dir(run, force=True) as out:
        assert out == run and [p.name for p in run.iterdir()] == [".lock"]
    assert (foreign / "thesis.tex").exists()  # a link inside the run is removed, not followed
    with open_run_dir(tmp_path / "empty", force=True) as out:
        assert out.is_dir()


def test_resume_needs_a_run_with_a_checkpoint_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(RunError, match="no such run folder"):
        with open_run_dir(missing, resume=True):
            pass
    assert not missing.exists()
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text('{"kind": "prior"}')
    assert is_run_dir(started)
    with pytest.raises(RunError, match="no checkpoint was written.*--force"):
        with open_run_dir(started, resume=True):
            pass
    run = _run(tmp_path / "run")
    with open_run_dir(run, resume=True) as out:
        assert (out / "history.csv").exists()
    with pytest.raises(ConfigError, match="exclude each other"):
        prepare_run_dir(run, resume=True, force=True)


def test_out_that_is_a_file_is_an_output_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    for resume, force in ((False, False), (False, True), (True, False)):
        with pytest.raises(OutputError, match="a file stands where a folder is expected"):
            prepare_run_dir(out, resume=resume, force=force)
    with pytest.raises(OutputError, match="a file stands"):
        io.check_writable(out / "below")


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_not_stale(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with open_run_dir(run):
        with pytest.raises(RunError, match=f"in use by pid {os.getpid()}"):
            with open_run_dir(run, resume=False, force=True):
                pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from oasisvq.io import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by pid {holder.pid}"):
            with open_run_dir(run, force=True):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").exists()  # the dead process's lock file is still there...
    with open_run_dir(run, force=True):  # ...and holds no one back
        pass


def test_check_writable_before_long_work(tmp_path: Path, monkeypatch) -> None:
    assert io.check_writable(tmp_path / "new" / "deep").is_dir()
    assert list((tmp_path / "new" / "deep").iterdir()) == []  # the probe is gone
    with pytest.raises(OutputError, match="MiB needed"):
        io.check_writable(tmp_path, need_bytes=2**62)

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(io, "open", refuse, raising=False)
    with pytest.raises(OutputError, match=f"{tmp_path}: cannot write: read-only file system"):
        io.check_writable(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_check_writable_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            io.check_writable(folder)
    finally:
        folder.chmod(0o700)


def test_only_rank_zero_checks_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    # under torchrun rank 0 may already be writing the new run when rank 1 opens it
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.json").write_text("[]")
    monkeypatch.setenv("RANK", "1")
    with open_run_dir(out) as held:
        assert held == out
    assert not (out / ".lock").exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunError, match="not a run of oasisvq"):
        with open_run_dir(out):
            pass
