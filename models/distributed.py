"""Multi-process training of the ranking model: torchrun + gloo + TorchRec DistributedModelParallel, on CPU.

The embedding tables are sharded across ranks with the FUSED compute kernel, so the row-wise Adagrad
that :func:`models.ranking.build_model` attaches in backward keeps running inside fbgemm on each
shard (it only touches the rows a batch looked up). DMP wraps the dense layers in DDP, so their
gradients are averaged across ranks and every rank holds the same dense weights.

What works on CPU with fbgemm-gpu-cpu 1.8.0 (2 ranks, gloo; tried forward, backward, steps, gather):

- ``row_wise`` + fused (the default): every table is split into contiguous row blocks, one per rank;
  balanced for any number of tables and ranks.
- ``table_wise`` + fused: each table lives whole on one rank (round robin).
- ``data_parallel`` also trains, but TorchRec gives it the DENSE kernel only (no fused kernel), which
  drops the in-backward row-wise Adagrad: the tables become ordinary replicated parameters whose full
  gradients are all-reduced, and fbgemm warns that its dense lookup has no autograd kernel. Not offered.
- ``column_wise`` + fused trains too, but each column shard keeps its own row-wise Adagrad state (the
  mean of g^2 over its columns, not the whole row), so it is a different optimizer from the
  single-process model's. Not offered.
- The DENSE kernel with ``row_wise`` / ``table_wise`` also runs, but likewise loses the in-backward optimizer.

With ``row_wise`` / ``table_wise`` the result matches one process stepping on the union of the ranks'
batches (DDP averages dense gradients; TorchRec divides sparse ones by the world size) up to float
noise, once the fused kernel gets the same Adagrad eps (see :func:`_pin_sparse_eps`); the self-test
measures that.

Checkpoints stay in the single-process format: :func:`unwrap_state_dict` gathers the sharded tables
(``ShardedTensor.gather``) to rank 0 under the same keys as the plain DLRM's ``state_dict()``.

Self-test (prints one JSON line on rank 0)::

    torchrun --nproc_per_node 2 -m models.distributed --selftest --out /tmp/model.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    construct_module_sharding_plan,
    row_wise,
    table_wise,
)
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.models.dlrm import DLRM

from models.config import ModelSettings
from models.ranking import ITEM_TABLE, USER_TABLE, Batch, build_model, dense_optimizer, dense_parameters, train_step

Sharding = Literal["row_wise", "table_wise"]
EBC_PATH = "sparse_arch.embedding_bag_collection"  # where build_model's DLRM keeps its tables
_FUSED = EmbeddingComputeKernel.FUSED.value
# the self-test's model (tests load its checkpoint with these)
SELFTEST_SETTINGS = ModelSettings(embedding_dim=8, user_buckets=64, item_buckets=48, dense_arch=[16, 8],
                                  over_arch=[16], sparse_lr=0.1, dense_lr=0.05, cross_features=False)
SELFTEST_N_DENSE = 3


def init_from_env() -> tuple[int, int]:
    """Join the torchrun job (gloo, env://) when there is one; a plain run stays single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def shard_rows(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous block of ``n`` examples; blocks differ in size by at most one.

    >>> [shard_rows(10, r, 3) for r in range(3)]
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def sharding_plan(model: DLRM, cfg: ModelSettings, world: int, sharding: Sharding = "row_wise") -> ShardingPlan:
    """Every table with the fused kernel (keeps the in-backward row-wise Adagrad).

    A table with fewer rows than ranks cannot be split by rows, so it falls back to table-wise.
    """
    ebc = model.sparse_arch.embedding_bag_collection
    rows = {t.name: t.num_embeddings for t in ebc.embedding_bag_configs()}
    if rows != {USER_TABLE: cfg.user_buckets, ITEM_TABLE: cfg.item_buckets}:
        raise ValueError(f"model tables {rows} do not match the settings: was the model built from other settings?")
    per_table = {}
    for i, (name, n_rows) in enumerate(rows.items()):
        if sharding == "row_wise" and n_rows >= world:
            per_table[name] = row_wise(compute_kernel=_FUSED)
        elif sharding in ("row_wise", "table_wise"):
            per_table[name] = table_wise(rank=i % world, compute_kernel=_FUSED)
        else:
            raise ValueError(f"unknown sharding {sharding!r}")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return ShardingPlan({EBC_PATH: construct_module_sharding_plan(
        ebc, per_table, world_size=world, local_size=local, device_type="cpu")})


def distribute(model: DLRM, cfg: ModelSettings, sharding: Sharding = "row_wise") -> DistributedModelParallel:
    """Shard ``build_model``'s tables across the process group; dense layers go into DDP.

    Call on every rank with a model built from the same settings (same seed, or the same checkpoint
    loaded on every rank): each rank copies its own rows of the tables from its copy of the model,
    and DDP broadcasts rank 0's dense weights.
    """
    if not dist.is_initialized():
        raise RuntimeError("distribute() needs torch.distributed initialised (init_from_env under torchrun)")
    plan = sharding_plan(model, cfg, dist.get_world_size(), sharding)
    env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)
    tables = {k: v for k, v in model.state_dict().items() if k.startswith(EBC_PATH + ".")}
    _pin_sparse_eps(model)
    dmp = DistributedModelParallel(model, env=env, device=torch.device("cpu"), plan=plan)
    # On CPU TorchRec re-initialises the sharded tables instead of copying the module's weights (it only
    # copies for accelerator devices), which would throw away a warm start; each rank slices its rows back in.
    missing, unexpected = dmp.load_state_dict(tables, strict=False)
    if unexpected or any(k.startswith(EBC_PATH + ".") for k in missing):
        raise RuntimeError(f"could not copy the tables into the sharded model: {missing=} {unexpected=}")
    return dmp


def _pin_sparse_eps(model: DLRM) -> None:
    """Hand the in-backward optimizer's eps to the fused kernel, which otherwise uses fbgemm's 1e-8.

    TorchRec builds the fused optimizer from the kwargs given to apply_optimizer_in_backward (only
    ``lr`` here), not from the optimizer object; torchrec.optim.RowWiseAdagrad's own default is 1e-10.
    With matching eps, 2 ranks land within ~1e-6 of one process; without, ~2e-3 after 20 steps.
    """
    for p in model.sparse_arch.parameters():
        optimizers = getattr(p, "_in_backward_optimizers", None)
        kwargs = getattr(p, "_optimizer_kwargs", None)
        if optimizers and kwargs and "eps" in optimizers[0].defaults:
            kwargs[0].setdefault("eps", optimizers[0].defaults["eps"])


def unwrap_state_dict(model: DistributedModelParallel, dst: int = 0) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict on rank ``dst`` (empty dict elsewhere), keyed like the plain DLRM.

    Collective: every rank must call it. Sharded tables are gathered with ``ShardedTensor.gather``
    (any shard layout, over gloo); dense tensors are DDP replicas, so
    rank ``dst``'s copy is taken as is. DMP's ``state_dict`` already strips DDP's ``module.`` prefix.
    """
    rank = dist.get_rank()
    full: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():  # same order on every rank, so the gathers pair up
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if rank == dst else None
            value.gather(dst=dst, out=out, dtype=value.dtype)
            if out is not None:
                full[key] = out
        elif rank == dst:
            full[key] = value.detach().clone()
    return full


def dense_digest(model: nn.Module) -> str:
    """A hash of the dense weights' bytes: equal on all ranks iff DDP kept them in sync."""
    h = hashlib.sha256()
    for p in dense_parameters(model):
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _synthetic(n: int, n_dense: int) -> tuple[list[str], list[str], list[list[str]], torch.Tensor, torch.Tensor]:
    """Users like even items, and a dense feature adds a bit: learnable by both halves of the model."""
    g = torch.Generator().manual_seed(1234)
    users = [f"u{int(i)}" for i in torch.randint(0, 20, (n,), generator=g)]
    item_ix = torch.randint(0, 30, (n,), generator=g)
    items = [f"i{int(i)}" for i in item_ix]
    recent = [[f"i{int(j)}" for j in torch.randint(0, 30, (int(k),), generator=g)]
              for k in torch.randint(0, 4, (n,), generator=g)]
    dense = torch.randn(n, n_dense, generator=g)
    labels = ((item_ix % 2 == 0) ^ (dense[:, 0] > 1.2)).float()
    return users, items, recent, dense, labels


def _selftest(out: str | None, steps: int, sharding: Sharding) -> int:
    """Train on per-rank shards, gather, and check against the same steps taken in one process."""
    rank, world = init_from_env()
    cfg, n_dense, n, batch = SELFTEST_SETTINGS, SELFTEST_N_DENSE, 256, 32
    users, items, recent, dense, labels = _synthetic(n, n_dense)
    shards = [shard_rows(n, r, world) for r in range(world)]

    def rows_at(step: int, shard: slice) -> list[int]:  # cycles through the shard: same step count on every rank
        size = shard.stop - shard.start
        return [shard.start + (step * batch + j) % size for j in range(batch)]

    def build(ix: list[int]) -> Batch:
        return Batch.build(cfg, [users[i] for i in ix], [items[i] for i in ix], [recent[i] for i in ix],
                           dense[ix], labels[ix])

    model = distribute(build_model(cfg, n_dense), cfg, sharding) if world > 1 else build_model(cfg, n_dense)
    opt = dense_optimizer(model, cfg)
    losses = torch.tensor([train_step(model, opt, build(rows_at(s, shards[rank]))) for s in range(steps)])
    digests = [dense_digest(model)] * world
    if world > 1:
        dist.all_reduce(losses)  # the global batch's loss: mean of the equal-sized rank batches
        losses /= world
        dist.all_gather_object(digests, digests[rank])
        state = unwrap_state_dict(model)
    else:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        # DDP averages dense gradients and TorchRec divides sparse ones by the world size, so one process
        # stepping on the union of the ranks' batches should land on the same weights, up to float noise
        ref = build_model(cfg, n_dense)
        everything = build(list(range(n)))
        loss_before = _loss(ref, everything)
        ref_opt = dense_optimizer(ref, cfg)
        for s in range(steps):
            train_step(ref, ref_opt, build([i for sh in shards for i in rows_at(s, sh)]))
        ref_state = ref.state_dict()
        plain = build_model(cfg, n_dense)
        plain.load_state_dict(state, strict=True)
        print(json.dumps({
            "world": world, "sharding": sharding if world > 1 else None, "steps": steps,
            "first_loss": float(losses[0]), "last_loss": float(losses[-1]),
            "all_rows_loss_before": loss_before, "all_rows_loss_after": _loss(plain, everything),
            "max_abs_diff_vs_one_process": max(float((state[k] - ref_state[k]).abs().max()) for k in ref_state),
            "dense_digests": digests,
        }), flush=True)
        if out:
            torch.save(state, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _loss(model: DLRM, batch: Batch) -> float:
    with torch.no_grad():
        logits = model(batch.dense, batch.sparse).squeeze(-1)
        return float(nn.functional.binary_cross_entropy_with_logits(logits, batch.labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selftest", action="store_true", help="train a tiny synthetic model, print one JSON line")
    parser.add_argument("--out", help="where rank 0 saves the gathered state dict (torch.save)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sharding", choices=["row_wise", "table_wise"], default="row_wise")
    args = parser.parse_args(argv)
    if not args.selftest:
        parser.error("nothing to do without --selftest")
    # TorchRec and torch.distributed deprecation chatter; the JSON line is the output
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    return _selftest(args.out, args.steps, args.sharding)


if __name__ == "__main__":
    sys.exit(main())
