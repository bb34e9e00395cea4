"""train_torchrec_vs_plain_torch: training samples/s, our TorchRec model vs the same net in plain torch.

Ours: ``models.ranking`` as training uses it: ``build_model`` + ``dense_optimizer`` +
``train_step`` on ``Batch.build`` batches (a KeyedJaggedTensor; sparse rows trained with row-wise
Adagrad inside backward, dense weights with Adagrad). Baseline: the same architecture written in
plain torch: an ``nn.EmbeddingBag`` per table (user; item, shared by ``item_id`` and the
``recent_items`` bag, looked up in one call), sum pooling, ``sparse=True`` gradients, the same
dense MLP, DLRM dot interaction and over MLP, ``torch.optim.Adagrad`` for the embeddings and
Adagrad for the dense weights. Same hashed ids, same dense features, same labels, same batch size.

Data: synthetic Zipf users/items (ids are strings, hashed into the configured buckets) with a
bag of up to ``--recent`` recent items per example. Batches for both sides are built BEFORE
timing (hashing / KJT / offsets are excluded from both timings); each timed step is
forward + loss + backward + optimizer steps. After a warm-up, rounds alternate (plain, ours,
plain, ours, ...) and the median round counts. Goal: ratio >= 1 and ours >= 100k samples/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import command_line, record  # noqa: E402
from infra.settings import Settings  # noqa: E402
from models.config import ModelSettings  # noqa: E402
from models.ranking import Batch, build_model, dense_optimizer, train_step  # noqa: E402

NAME = "train_torchrec_vs_plain_torch"


# --------------------------------------------------------------------------- data


def zipf_ids(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """``size`` draws from {0..n-1} with P(k) ~ 1 / (k+1)**a."""
    p = 1.0 / np.arange(1, n + 1) ** a
    return rng.choice(n, size=size, p=p / p.sum())


def make_batches(cfg: ModelSettings, *, n_batches: int, batch_size: int, users: int, items: int, recent: int,
                 n_dense: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        u = zipf_ids(rng, users, batch_size, 1.05)
        it = zipf_ids(rng, items, batch_size, 1.05)
        lens = rng.integers(0, recent + 1, size=batch_size)
        flat = zipf_ids(rng, items, int(lens.sum()), 1.05)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        recent_lists = [[f"i{x}" for x in flat[bounds[k]:bounds[k + 1]]] for k in range(batch_size)]
        dense = torch.from_numpy(rng.standard_normal((batch_size, n_dense)).astype(np.float32))
        labels = torch.from_numpy((rng.random(batch_size) < 0.2).astype(np.float32))
        out.append(Batch.build(cfg, [f"u{x}" for x in u], [f"i{x}" for x in it], recent_lists, dense, labels))
    return out


# --------------------------------------------------------------------------- plain torch baseline


def mlp(sizes: list[int], relu_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if relu_last or k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PlainDLRM(nn.Module):
    """DLRM as torchrec.models.dlrm.DLRM computes it, on nn.EmbeddingBag tables with sparse grads."""

    def __init__(self, cfg: ModelSettings, n_dense: int) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.user = nn.EmbeddingBag(cfg.user_buckets, d, mode="sum", sparse=True, include_last_offset=True)
        self.item = nn.EmbeddingBag(cfg.item_buckets, d, mode="sum", sparse=True, include_last_offset=True)
        for table in (self.user, self.item):  # torchrec's default init: U(-sqrt(1/n), sqrt(1/n))
            bound = (1.0 / table.num_embeddings) ** 0.5
            nn.init.uniform_(table.weight, -bound, bound)
        self.dense_arch = mlp([n_dense, *cfg.dense_arch], relu_last=True)
        n_features = 3  # user_id, item_id, recent_items
        self.register_buffer("triu", torch.triu_indices(n_features + 1, n_features + 1, offset=1), persistent=False)
        n_inter = (n_features + 1) * n_features // 2
        self.over_arch = mlp([d + n_inter, *cfg.over_arch, 1], relu_last=False)

    def forward(self, dense: torch.Tensor, users: torch.Tensor, user_offsets: torch.Tensor, items: torch.Tensor,
                item_offsets: torch.Tensor) -> torch.Tensor:
        b = dense.shape[0]
        x = self.dense_arch(dense)
        u = self.user(users, user_offsets)
        it = self.item(items, item_offsets)  # 2B bags: the candidates, then the recent bags
        combined = torch.stack([x, u, it[:b], it[b:]], dim=1)  # (B, 4, D)
        inter = torch.bmm(combined, combined.transpose(1, 2))[:, self.triu[0], self.triu[1]]
        return self.over_arch(torch.cat([x, inter], dim=1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.user.weight, self.item.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith(("user.", "item."))]


def plain_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The same hashed ids as the batch's KJT, laid out for two EmbeddingBag calls (built before timing)."""
    kjt = batch.sparse
    users = kjt["user_id"]
    item, recent = kjt["item_id"], kjt["recent_items"]
    b = batch.dense.shape[0]
    items = torch.cat([item.values(), recent.values()])
    item_offsets = torch.cat([item.offsets(), recent.offsets()[1:] + b])
    return (batch.dense.contiguous(), users.values().contiguous(), users.offsets().contiguous(), items, item_offsets,
            batch.labels)


def plain_step(model: PlainDLRM, sparse_opt: torch.optim.Optimizer, dense_opt: torch.optim.Optimizer,
               inputs: tuple[torch.Tensor, ...]) -> float:
    *x, labels = inputs
    sparse_opt.zero_grad()
    dense_opt.zero_grad()
    logits = model(*x).squeeze(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    sparse_opt.step()
    dense_opt.step()
    return float(loss)


# --------------------------------------------------------------------------- timing


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>9.0f} samples/s"), TimeElapsedColumn())


def timed(bar: Progress, desc: str, steps: int, batch_size: int, step) -> float:
    task = bar.add_task(desc, total=steps, rate=0.0)
    start = time.perf_counter()
    for k in range(steps):
        step(k)
        bar.update(task, advance=1, rate=(k + 1) * batch_size / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per side before the first round")
    parser.add_argument("--batch-size", type=int, default=None, help="default: settings.training.batch_size")
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--recent", type=int, default=20, help="max recent items per example")
    parser.add_argument("--dense", type=int, default=13, help="dense features")
    parser.add_argument("--batches", type=int, default=20, help="distinct pre-built batches, cycled")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both sides")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = Settings()
    cfg = settings.model
    bs = args.batch_size or settings.training.batch_size
    batches = make_batches(cfg, n_batches=args.batches, batch_size=bs, users=args.users, items=args.items,
                           recent=args.recent, n_dense=args.dense, seed=1)
    plain_batches = [plain_inputs(b) for b in batches]
    print(f"{len(batches)} batches of {bs} prebuilt; embedding_dim {cfg.embedding_dim}, buckets "
          f"{cfg.user_buckets:,} users / {cfg.item_buckets:,} items; torch threads {torch.get_num_threads()}")

    ours_model = build_model(cfg, n_dense=args.dense)
    ours_opt = dense_optimizer(ours_model, cfg)
    plain_model = PlainDLRM(cfg, n_dense=args.dense)
    sparse_opt = torch.optim.Adagrad(plain_model.sparse_parameters(), lr=cfg.sparse_lr)
    plain_dense_opt = torch.optim.Adagrad(plain_model.dense_parameters(), lr=cfg.dense_lr)

    def ours(k: int) -> float:
        return train_step(ours_model, ours_opt, batches[k % len(batches)])

    def plain(k: int) -> float:
        return plain_step(plain_model, sparse_opt, plain_dense_opt, plain_batches[k % len(batches)])

    ours_rates, plain_rates = [], []
    with progress() as bar:
        timed(bar, "warm-up plain", args.warmup, bs, plain)
        timed(bar, "warm-up ours", args.warmup, bs, ours)
        for r in range(args.rounds):
            plain_rates.append(timed(bar, f"round {r + 1} plain", args.steps, bs, plain))
            ours_rates.append(timed(bar, f"round {r + 1} ours", args.steps, bs, ours))
            bar.console.print(f"round {r + 1}: plain {plain_rates[-1]:,.0f} samples/s, ours {ours_rates[-1]:,.0f} samples/s")
    med_ours, med_plain = statistics.median(ours_rates), statistics.median(plain_rates)
    ratio = med_ours / med_plain
    print(f"median: ours {med_ours:,.0f} samples/s, plain {med_plain:,.0f} samples/s, ratio {ratio:.3f}")
    if args.no_record:
        return
    command = command_line("train_torchrec.py", parser, args)
    record(
        NAME,
        value=med_ours,
        baseline=med_plain,
        ratio=ratio,
        unit="samples/s",
        goal=1,
        command=command,
        note=(f"batch {bs}, dim {cfg.embedding_dim}, {cfg.user_buckets:,}/{cfg.item_buckets:,} buckets, "
              f"{args.users:,} Zipf users / {args.items:,} items, recent<= {args.recent}, {args.dense} dense, "
              f"median of {args.rounds} alternating rounds x {args.steps} steps, batch building excluded, "
              f"{torch.get_num_threads()} torch threads; absolute goal 100k samples/s: "
              f"{'met' if med_ours >= 100_000 else 'MISSED'}"),
    )


if __name__ == "__main__":
    main()
