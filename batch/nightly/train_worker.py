"""One rank of multi-process training (``training.nproc > 1``), started by torchrun from the retrain.

The retrain builds the examples once and saves them; every rank trains the DMP-wrapped model
(models.distributed: row-wise sharded tables, fused row-wise Adagrad, DDP dense) on its own block
of rows, with the same number of steps on every rank (DDP needs that), and rank 0 writes the
gathered state dict in the single-process format.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m batch.nightly.train_worker \\
        --examples ex.npz --job job.json --out state.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from models.config import ModelSettings
from models.distributed import distribute, init_from_env, shard_rows, unwrap_state_dict
from models.ranking import build_model, dense_optimizer, train_step
from models.train import Examples


def save_examples(path: Path, examples: Examples) -> None:
    lengths = np.array([len(r) for r in examples.recent], dtype=np.int64)
    flat = np.array([i for r in examples.recent for i in r], dtype=str)
    np.savez(path, users=examples.users.astype(str), items=examples.items.astype(str), recent=flat, lengths=lengths,
             dense=examples.dense, labels=examples.labels, group=np.array(examples.group),
             offsets=examples.offsets if examples.offsets is not None else np.zeros(len(examples), dtype=np.float32))


def load_examples(path: Path) -> Examples:
    z = np.load(path, allow_pickle=False)
    offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
    flat = z["recent"].tolist()
    recent = [flat[offsets[i]:offsets[i + 1]] for i in range(len(z["lengths"]))]
    return Examples(z["users"].astype(object), z["items"].astype(object), recent, z["dense"], z["labels"],
                    int(z["group"]) if "group" in z else 1, z["offsets"] if "offsets" in z else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--job", type=Path, required=True, help="JSON: model settings, n_dense, epochs, batch_size, seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())
    cfg = ModelSettings.from_meta(job["model"])
    rank, world = init_from_env()
    examples = load_examples(args.examples)
    g = examples.group  # shard whole lists; equal steps on every rank: drop at most world - 1 lists
    block = shard_rows(world * (len(examples) // g // world), rank, world)
    mine = examples.take(np.arange(block.start * g, block.stop * g))
    model = build_model(cfg, job["n_dense"])
    model = distribute(model, cfg) if world > 1 else model
    optimizer = dense_optimizer(model, cfg)
    rng = np.random.default_rng(job["seed"] + rank)
    losses: list[float] = []
    for _ in range(job["epochs"]):
        for batch in mine.batches(cfg, job["batch_size"], rng):
            losses.append(train_step(model, optimizer, batch, g))
    state = unwrap_state_dict(model) if world > 1 else model.state_dict()
    if rank == 0:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(args.out))
        args.out.with_suffix(".losses.json").write_text(json.dumps({"world": world, "losses": losses}))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
