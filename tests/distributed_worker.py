"""``oasisvq <args>`` (the CLI's own ``main``) with probes, for tests/test_distributed.py.

Launched by the tests as ``python tests/distributed_worker.py train ...`` (one process)
or through ``torchrun ... tests/distributed_worker.py train ...``. Each process writes
into ``$OASISVQ_TEST_PROBE``:

* ``pid-<rank>``       its process id (so a test can SIGKILL the workers),
* ``decodes``          one line per decode of the data set (the cache should make it one),
* ``resumed-<rank>``   ``epoch step`` of the checkpoint it resumed from, if any,
* ``rank-<rank>.pt``   its model state, world size and per-process batch after training.

``OASISVQ_TEST_STEP_DELAY`` (seconds) slows every training step, so a test can kill a
run mid-epoch. ``OASISVQ_TEST_MODEL`` (JSON) overrides fields of the preset, e.g. a tiny
3D network.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    probe = Path(os.environ["OASISVQ_TEST_PROBE"])
    probe.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (probe / f"pid-{rank}").write_text(str(os.getpid()))
    # train_vqvae builds the model before the engine seeds the RNGs, and torch's default
    # seed is random per process: seed here so that separate runs start from the same
    # weights (within one run, DDP copies rank 0's weights to every rank anyway).
    torch.manual_seed(0)

    from oasisvq.data import loader
    from oasisvq.train import distributed as D
    from oasisvq.train import engine

    read = loader._read

    def counting_read(root, opts):
        with open(probe / "decodes", "a") as f:
            f.write(f"{rank}\n")
        return read(root, opts)

    loader._read = counting_read

    delay = float(os.environ.get("OASISVQ_TEST_STEP_DELAY", "0"))
    step = engine.Engine.train_step

    def slow_step(self, batch):
        time.sleep(delay)
        return step(self, batch)

    if delay:
        engine.Engine.train_step = slow_step

    resume = engine.Engine.resume

    def recording_resume(self):
        found = resume(self)
        (probe / f"resumed-{rank}").write_text(f"{self.epoch} {self.step_in_epoch}")
        return found

    engine.Engine.resume = recording_resume

    fit = engine.Engine.fit

    def recording_fit(self):
        history = fit(self)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        info = {"state": state, "world_size": D.world_size(), "rank_batch": self.rank_batch}
        torch.save(info, probe / f"rank-{rank}.pt")
        return history

    engine.Engine.fit = recording_fit

    if overrides := json.loads(os.environ.get("OASISVQ_TEST_MODEL", "{}")):
        from oasisvq.train import vqvae_run

        get_preset = vqvae_run.get_preset
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        vqvae_run.get_preset = lambda name, **kw: get_preset(name, **{**kw, **overrides})

    from oasisvq.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
