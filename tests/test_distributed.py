"""Two-process TorchRec training (torchrun + gloo + DistributedModelParallel) on CPU.

Runs the module's own self-test in real subprocesses: ranks train on disjoint shards, the sharded
tables are gathered to rank 0, and the checkpoint must load into the plain single-process model.
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import distributed
from models.distributed import SELFTEST_N_DENSE, SELFTEST_SETTINGS, shard_rows
from models.ranking import Batch, build_model, predict

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_shard_rows_covers_every_example_once():
    for n in (0, 1, 7, 256):
        for world in (1, 2, 3):
            blocks = [shard_rows(n, r, world) for r in range(world)]
            rows = [i for b in blocks for i in range(n)[b]]
            assert rows == list(range(n))
            sizes = [b.stop - b.start for b in blocks]
            assert max(sizes) - min(sizes) <= 1
    assert doctest.testmod(distributed).failed == 0


def _run_selftest(out: Path, sharding: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    # --standalone: the rendezvous store binds port 0, so parallel test runs never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "models.distributed", "--selftest", "--sharding", sharding, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
def test_two_process_training_matches_one_process_and_saves_a_plain_checkpoint(tmp_path: Path, sharding: str):
    out = tmp_path / "model.pt"
    report = _run_selftest(out, sharding)

    assert report["world"] == 2 and report["sharding"] == sharding
    assert report["last_loss"] < report["first_loss"]
    assert report["all_rows_loss_after"] < 0.8 * report["all_rows_loss_before"]
    # DDP kept the dense weights bit-identical on both ranks
    digests = report["dense_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # the sharded run is the same optimisation as one process on the union of the ranks' batches
    assert report["max_abs_diff_vs_one_process"] < 1e-4

    state = torch.load(out, weights_only=True)
    model = build_model(SELFTEST_SETTINGS, SELFTEST_N_DENSE)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(state) == set(fresh)
    model.load_state_dict(state, strict=True)
    changed = {k for k in fresh if not torch.equal(fresh[k], state[k])}
    assert {"sparse_arch.embedding_bag_collection.embedding_bags.user.weight",
            "sparse_arch.embedding_bag_collection.embedding_bags.item.weight",
            "over_arch.model.1.weight"} <= changed

    batch = Batch.build(SELFTEST_SETTINGS, ["u1", "never-seen"], ["i2", "brand-new"], [["i3"], []],
                        torch.zeros(2, SELFTEST_N_DENSE))
    p = predict(model, batch)
    assert p.shape == (2,) and torch.isfinite(p).all()
