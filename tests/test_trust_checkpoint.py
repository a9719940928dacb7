"""No file of a run is ever unpickled: the training state is tensors + JSON; a crafted
state.pt runs no code on any path that reads a run; damaged files are one-line errors."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from trust_toy import assert_same_run, train_toy

import oasisvq
from oasisvq.errors import OasisError, RunError
from oasisvq.runs import checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "oasisvq"


class Payload:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _poison(run: Path, marker: Path) -> list[Path]:
    """Replace the training state of every checkpoint of ``run`` by a crafted state.pt."""
    found = checkpoint.candidates(run)
    assert found, run
    for ckpt in found:
        for name in (checkpoint.STATE_JSON, checkpoint.STATE_TENSORS):
            (ckpt / name).unlink()
        torch.save({"epoch": 1, "optimizer": Payload(marker)}, ckpt / checkpoint.LEGACY_STATE)
    return found


def _refused(error: type[OasisError], call) -> str:
    """``call()`` fails with ``error``: raised, or (through the CLI) its exit code."""
    try:
        code = call()
    except error as exc:
        assert "\n" not in str(exc), str(exc)
        return str(exc)
    assert code == error.exit_code
    return ""


def test_state_round_trips_through_tensors_and_json(tmp_path: Path) -> None:
    state = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "param_groups": [{"betas": (0.9, 0.99), "params": [0], "foreach": None}],
        },
        "rng": {"numpy": np.random.get_state(), "python": __import__("random").getstate()},
        "floats": [float("nan"), float("inf"), -float("inf"), 0.1, np.float32(2.5)],
        "$odd": {"$tensor": "not a tensor"},
        "bytes": torch.arange(5, dtype=torch.uint8),
    }
    model = torch.nn.Linear(2, 1)
    ckpt = checkpoint.save(tmp_path, "epoch-0001", model, {"kind": "vqvae"}, state)
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "config.json",
        "state.safetensors",
        "state.json",
    }
    json.loads((ckpt / "state.json").read_text())  # strict JSON: no bare NaN
    assert "NaN" not in (ckpt / "state.json").read_text()
    back = checkpoint.load_state(ckpt)
    group = back["optimizer"]["param_groups"][0]
    assert group == {"betas": (0.9, 0.99), "params": [0], "foreach": None}
    moments = back["optimizer"]["state"][0]  # an int key again
    assert torch.equal(moments["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert moments["step"].shape == () and float(moments["step"]) == 3.0
    np_state = back["rng"]["numpy"]
    assert np_state[0] == "MT19937" and np.array_equal(np_state[1], state["rng"]["numpy"][1])
    assert np_state[1].dtype == np.uint32
    assert back["rng"]["python"] == state["rng"]["python"]  # tuples stay tuples
    nan, inf, ninf, tenth, half = back["floats"]
    assert nan != nan and inf == float("inf") and ninf == -float("inf") and tenth == 0.1
    assert half == 2.5 and type(half) is float
    assert back["$odd"] == {"$tensor": "not a tensor"}
    assert torch.equal(back["bytes"], state["bytes"])


def test_a_state_that_needs_pickle_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="without pickle"):
        checkpoint.save(tmp_path, "epoch-0001", torch.nn.Linear(1, 1), {}, {"x": object()})
    assert checkpoint.latest(tmp_path) is None


def test_crafted_state_pt_runs_no_code_on_any_path(tiny_tree: Path, tmp_path: Path) -> None:
    """train --resume, train-prior --resume and the feature network of evaluate-samples."""
    from oasisvq.cli import main
    from oasisvq.data.loader import DataOptions, load_splits
    from oasisvq.evaluate.features import feature_net
    from oasisvq.train.prior_run import train_prior

    run, marker = tmp_path / "run", tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(tmp_path / "probe")))  # the payload does run code...
    assert (tmp_path / "probe").exists()  # ...when it is unpickled
    args = ["--preset", "seed", "--size", "32", "--batch-size", "8", "--amp", "off"]
    assert main(["train", "--data", str(tiny_tree), "--out", str(run), *args, "--epochs", "1"]) == 0
    small = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    prior = dict(prior="transformer", options=small, device="cpu", amp="off", batch_size=8)
    train_prior(run, epochs=1, **prior)
    opts = {"size": 32}
    splits = load_splits(tiny_tree, DataOptions(size=32))
    features = dict(epochs=1, device="cpu", batch_size=16)
    feature_net(run, str(tiny_tree), opts, splits["train"], splits["validate"], **features)
    poisoned = [
        *_poison(run, marker),
        *_poison(run / "priors" / "transformer", marker),
        *_poison(next(p for p in (run / "features").iterdir() if p.is_dir()), marker),
    ]

    for ckpt in poisoned:
        with pytest.raises(RunError, match="cannot be read safely") as err:
            checkpoint.load_state(ckpt)
        assert str(ckpt / "state.pt") in str(err.value) and "evaluate" in str(err.value)
    _refused(RunError, lambda: main(["train", "--out", str(run), "--resume"]))
    _refused(RunError, lambda: train_prior(run, resume=True, **prior))
    with pytest.raises(RunError):
        feature_net(run, str(tiny_tree), opts, splits["train"], splits["validate"], **features)
    assert not marker.exists()
    # a refused resume keeps every checkpoint; the weights still serve evaluation
    assert all((ckpt / "model.safetensors").is_file() for ckpt in poisoned)
    assert oasisvq.load(run).encode(torch.rand(1, 32, 32)).shape == (1, 2, 2)


def test_a_plain_state_pt_of_an_earlier_version_resumes_exactly(
    toy_reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(toy_reference, run)
    for ckpt in checkpoint.candidates(run):
        if ckpt.name != "epoch-0001-step-000002":
            shutil.rmtree(ckpt)
            continue
        state = checkpoint.load_state(ckpt)  # as an earlier version pickled it
        torch.save(state, ckpt / "state.pt")
        (ckpt / "state.json").unlink()
        (ckpt / "state.safetensors").unlink()
    train_toy(run, resume=True)
    assert_same_run(run, toy_reference)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("model.safetensors", b"\x00" * 7, "checkpoint weights is damaged"),
        ("model.safetensors", None, "checkpoint weights is missing"),
        ("config.json", b'{"kind": "vq', "checkpoint config is damaged"),
        ("state.json", b"[1, 2", "checkpoint state is damaged"),
        ("state.json", b'{"format": "oasisvq-train-state/1", "state": {"$evil": 1}}', "unknown"),
        ("state.json", b'{"format": "pickle"}', "not a training state"),
        ("state.safetensors", b"\xff" * 100, "checkpoint state is damaged"),
        ("state.pt", b"\x80\x04garbage", "cannot be read safely"),
    ],
)
def test_damaged_checkpoint_files_are_one_line_run_errors(
    toy_reference: Path, tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    ckpt = tmp_path / "epoch-0001"
    shutil.copytree(checkpoint.latest(toy_reference), ckpt)
    if name == "state.pt":
        (ckpt / "state.json").unlink()
        (ckpt / "state.safetensors").unlink()
    if content is None:
        (ckpt / name).unlink()
    else:
        (ckpt / name).write_bytes(content)
    with pytest.raises(RunError) as err:
        checkpoint.load_config(ckpt)
        checkpoint.load_state(ckpt)
        checkpoint.load_weights(ckpt, _toy_model())
    message = str(err.value)
    assert reason in message and str(ckpt / name) in message and "\n" not in message


def _toy_model() -> torch.nn.Module:
    from trust_toy import ToyTask

    return ToyTask().model


def test_nothing_in_src_unpickles() -> None:
    """``torch.load`` only with ``weights_only=True``; no pickle, no object arrays."""
    hits = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                hits.append(f"{path}: {m.group(0)}")
        for bad in ("weights_only=False", "pickle.load", "allow_pickle=True", "import pickle"):
            if bad in text:
                hits.append(f"{path}: {bad}")
    assert hits == []
