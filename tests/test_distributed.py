"""Multi-process training through torchrun with the gloo backend, on CPU (issue #6).

Every run goes through the CLI (``oasisvq train``) in real processes, launched by
``tests/distributed_worker.py``, which adds probes (per-rank final weights, pids, decode
count, resume point). ``--batch-size`` is the global batch: 8 on one process is 4 on
each of two, so the two runs see the same global batches and must agree up to float
rounding (the model has GroupNorm, no BatchNorm, so samples are independent).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import write_tree
from safetensors.torch import load_file
from volume_toy import TINY3D, write_brains

from oasisvq.runs import checkpoint

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo (and POSIX signals)",
)

WORKER = Path(__file__).with_name("distributed_worker.py")
# seed preset at 64 px (a 4x4 code grid), 32 training images: 4 steps of 8 images per epoch
TRAIN = [
    "train",
    "--preset",
    "seed",
    "--size",
    "64",
    "--batch-size",
    "8",
    "--amp",
    "off",
    "--device",
    "cpu",
    "--seed",
    "0",
]
TIMEOUT = 600


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "data"
    return write_tree(root, {"train": 32, "validate": 8, "test": 4}, size=64)


def _env(probe: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OASISVQ_TEST_PROBE=str(probe), OASISVQ_CACHE=str(cache), OMP_NUM_THREADS="1", **extra
    )
    return env


def _one(args: list[str]) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def _torchrun(n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "--monitor-interval=0.1", str(WORKER), *args]  # fmt: skip


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:  # the child keeps its own handle
        return subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        raise
    assert rc == 0, f"{' '.join(map(str, proc.args))} exited {rc}:\n{log.read_text()[-4000:]}"


def _rank_state(probe: Path, rank: int) -> dict:
    return torch.load(probe / f"rank-{rank}.pt", weights_only=True)


def _epochs(run: Path) -> list[int]:
    return [row["epoch"] for row in json.loads((run / "history.json").read_text())]


def _latest(run: Path) -> str:
    pointer = run / "checkpoints" / "LATEST"
    return pointer.read_text().strip() if pointer.exists() else ""


def test_two_processes_match_one_process_with_the_same_global_batch(
    data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"  # empty: both runs (three processes) race to decode the data
    args = [*TRAIN, "--data", str(data), "--epochs", "2"]
    one = _start(
        _one([*args, "--out", str(tmp_path / "one")]),
        _env(tmp_path / "p1", cache),
        tmp_path / "one.log",
    )
    two = _start(
        _torchrun(2, [*args, "--out", str(tmp_path / "two")]),
        _env(tmp_path / "p2", cache),
        tmp_path / "two.log",
    )
    _finish(one, tmp_path / "one.log")
    _finish(two, tmp_path / "two.log")

    decodes = [
        p.read_text().split()
        for p in (tmp_path / "p1" / "decodes", tmp_path / "p2" / "decodes")
        if p.exists()
    ]
    assert sum(map(len, decodes)) == 1, f"the data set was decoded {decodes} times, not once"

    r0, r1, single = (
        _rank_state(tmp_path / "p2", 0),
        _rank_state(tmp_path / "p2", 1),
        _rank_state(tmp_path / "p1", 0),
    )
    assert (r0["world_size"], r0["rank_batch"]) == (2, 4)
    assert (single["world_size"], single["rank_batch"]) == (1, 8)

    # every rank holds the very same codebook (and weights)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), f"{name} differs between rank 0 and rank 1"
    # rank 0 wrote the checkpoint
    two_run = tmp_path / "two"
    saved = load_file(str(two_run / "checkpoints" / "epoch-0002" / "model.safetensors"))
    for name, value in r0["state"].items():
        assert torch.equal(value, saved[name]), f"{name}: checkpoint is not rank 0's model"
    state = checkpoint.load_state(two_run / "checkpoints" / "epoch-0002")
    assert (state["world_size"], state["global_batch"], state["epoch"]) == (2, 8, 2)

    # 2 processes x 4 images == 1 process x 8 images, up to float rounding
    q = "quantizer."
    assert bool(r0["state"][q + "initialised"])
    assert torch.equal(r0["state"][q + "ema_count"], single["state"][q + "ema_count"]), (
        "code assignments differ"
    )
    # fp32 convolutions of 4 and of 8 images round differently, and AdamW's normalised step
    # turns rounding in a near-zero gradient into a step of up to lr (2e-3): on an AVX-512
    # CPU single weights differed by up to ~1.3e-4 after 8 steps. The ranks' equality above
    # and the matching code assignments and losses are the exact checks.
    for name, value in single["state"].items():
        other = r0["state"][name]
        assert torch.allclose(value.double(), other.double(), rtol=1e-3, atol=1e-3), (
            f"{name}: 1 vs 2 processes differ by {(value.double() - other.double()).abs().max():.3g}"
        )
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((two_run / "history.json").read_text())
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == [1, 2]
    for a, b in zip(h1, h2, strict=True):
        for key in (
            "train_loss",
            "train_mse",
            "train_codes_used",
            "train_perplexity",
            "val_mse",
            "lr",
        ):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_a_3d_preset_trains_on_two_processes_as_on_one(tmp_path: Path) -> None:
    """Whole volumes (a tiny ``compact3d``, augmentation off so both runs see the same
    volumes): the ranks hold one model and one codebook, and two processes with half the
    batch each follow one process with the whole batch."""
    root = tmp_path / "brains"
    write_brains(root, n_train=8, n_validate=2)
    model = json.dumps({**TINY3D, "augment": False})
    args = ["train", "--data", str(root), "--preset", "compact3d", "--batch-size", "4"]
    args += ["--epochs", "2", "--amp", "off", "--device", "cpu", "--seed", "0"]
    cache = tmp_path / "cache"
    runs = {}
    for name, cmd in (("one", _one), ("two", lambda a: _torchrun(2, a))):
        log = tmp_path / f"{name}.log"
        env = _env(tmp_path / f"p-{name}", cache, OASISVQ_TEST_MODEL=model)
        runs[name] = (_start(cmd([*args, "--out", str(tmp_path / name)]), env, log), log)
    for proc, log in runs.values():
        _finish(proc, log)
    r0, r1 = _rank_state(tmp_path / "p-two", 0), _rank_state(tmp_path / "p-two", 1)
    single = _rank_state(tmp_path / "p-one", 0)
    assert (r0["world_size"], r0["rank_batch"], single["rank_batch"]) == (2, 2, 4)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), f"{name} differs between rank 0 and rank 1"
    q = "quantizer."
    assert torch.equal(r0["state"][q + "ema_count"], single["state"][q + "ema_count"])
    saved = json.loads((tmp_path / "two" / "config.json").read_text())["model"]
    assert saved["dims"] == 3 and saved["volume_shape"] == [16, 16, 16]
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [r["epoch"] for r in h2] == [1, 2]
    for a, b in zip(h1, h2, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)


def test_killed_distributed_run_resumes_with_another_process_count(
    data: Path, tmp_path: Path
) -> None:
    run, probe, cache, log = (
        tmp_path / "run",
        tmp_path / "probe",
        tmp_path / "cache",
        tmp_path / "two.log",
    )
    args = [
        *TRAIN,
        "--data",
        str(data),
        "--epochs",
        "2",
        "--checkpoint-every",
        "1",
        "--out",
        str(run),
    ]
    proc = _start(_torchrun(2, args), _env(probe, cache, OASISVQ_TEST_STEP_DELAY="0.3"), log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "step" not in _latest(run):
            assert proc.poll() is None, (
                f"run ended before its first step checkpoint:\n{log.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, "no step checkpoint in time"
            time.sleep(0.02)
    finally:
        # a crash: SIGKILL the workers (they run in sessions of their own) and torchrun
        workers = [int(p.read_text()) for p in sorted(probe.glob("pid-*"))]
        for pid in workers:
            _kill(pid)
        _kill_group(proc.pid)
        proc.wait()
    assert len(workers) == 2
    _wait_gone(workers)
    killed_at = _latest(run)
    assert killed_at.startswith("epoch-0001-step-"), killed_at
    assert not (run / "history.json").exists() or _epochs(run) == []

    # 2 -> 1 process, mid-epoch
    log1 = tmp_path / "resume1.log"
    _finish(_start(_one(["train", "--out", str(run), "--resume"]), _env(probe, cache), log1), log1)
    # the step checkpoint is used as is: the global batch (8) is unchanged, so the
    # remaining steps of the epoch are the same ones on 1 process as on 2
    epoch, step = map(int, (probe / "resumed-0").read_text().split())
    assert epoch == 0 and step == int(killed_at.rsplit("-", 1)[1]) >= 1
    assert _epochs(run) == [1, 2]
    assert _latest(run) == "epoch-0002"
    state = checkpoint.load_state(run / "checkpoints" / "epoch-0002")
    assert (state["epoch"], state["step_in_epoch"], state["world_size"], state["global_batch"]) == (
        2,
        0,
        1,
        8,
    )

    # 1 -> 2 processes, one more epoch
    log2 = tmp_path / "resume2.log"
    more = ["train", "--out", str(run), "--resume", "--epochs", "3"]
    _finish(_start(_torchrun(2, more), _env(probe, cache), log2), log2)
    assert [(probe / f"resumed-{r}").read_text() for r in (0, 1)] == ["2 0", "2 0"]
    assert _epochs(run) == [1, 2, 3]
    assert _latest(run) == "epoch-0003"
    state = checkpoint.load_state(run / "checkpoints" / "epoch-0003")
    assert (state["epoch"], state["step_in_epoch"], state["world_size"], state["global_batch"]) == (
        3,
        0,
        2,
        8,
    )
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3]
    r0, r1 = _rank_state(probe, 0), _rank_state(probe, 1)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), f"{name} differs between rank 0 and rank 1"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pid: int) -> None:
    """SIGKILL process group ``pid``; one already gone (the run failed early) is fine, so
    the failure that ended it is the one reported."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Until every pid has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                break
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker {pid} still alive after SIGKILL")


@pytest.mark.parametrize(
    ("name", "local_rank", "expected"),
    [
        ("cuda", "0", "cuda:0"),
        ("cuda", "3", "cuda:3"),  # one process per GPU under torchrun
        ("cuda:1", "3", "cuda:1"),  # an explicit index is kept
        ("auto", "2", "cuda:2"),
    ],
)
def test_a_bare_cuda_device_gets_this_process_index(monkeypatch, name, local_rank, expected):
    # torch.cuda.set_device refuses a device without an index on some torch versions
    from oasisvq import device as D

    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    device = D.pick_device(name)
    assert device == torch.device(expected) and chosen == [device]
