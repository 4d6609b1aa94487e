"""What the launcher gives TorchServe's workers: every CPU for each batch, and CPU slots so the
models' workers take turns on them; the environment may ask otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store.torchserve.launcher import TorchServe
from model_store.worker.cpus import SLOTS_DIR_ENV, SLOTS_ENV


@pytest.mark.parametrize(
    ("pinned", "asked", "threads", "slots"),
    [
        (frozenset({0, 1}), {}, "2", "1"),  # both models' batches on both CPUs, one at a time
        (frozenset({0}), {}, "1", "1"),
        (frozenset({0, 1}), {"OMP_NUM_THREADS": "1"}, "1", "2"),  # the old split, if asked
    ],
)
def test_every_batch_runs_on_all_the_cpus_one_at_a_time(tmp_path, pinned, asked, threads, slots):
    server = TorchServe(["eca_resnet50"], run_dir=tmp_path, cpus=pinned, worker_env=asked)
    given = server._worker_defaults() | asked
    assert (given["OMP_NUM_THREADS"], given[SLOTS_ENV]) == (threads, slots)
    assert Path(given[SLOTS_DIR_ENV]).is_dir() and Path(given[SLOTS_DIR_ENV]).is_relative_to(
        tmp_path
    )
