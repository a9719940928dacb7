"""Runs written by earlier versions load and give the outputs they gave then."""

from pathlib import Path

import numpy as np
import torch

import oasisvq

OLD_RUN = Path(__file__).parent / "data" / "run-260978a"


def test_run_from_commit_260978a_loads_with_the_same_outputs():
    expected = np.load(OLD_RUN / "expected.npz")
    model = oasisvq.load(OLD_RUN)
    assert model.config.upsample == "nearest" and model.config.quantizer.normalize is False
    codes = model.encode(expected["images"])
    assert torch.equal(codes, torch.from_numpy(expected["codes"]))
    recon = model.decode(codes)
    np.testing.assert_allclose(recon.numpy(), expected["recon"][:, 0], atol=1e-5)
