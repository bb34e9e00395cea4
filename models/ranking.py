"""The TorchRec ranking model: DLRM over user id, item id and the user's recent items.

Sparse inputs are a KeyedJaggedTensor with three keys: ``user_id`` (one id), ``item_id`` (one
id, the candidate) and ``recent_items`` (a bag of the user's last items, multi-hot; it shares
the item table, so "recently seen X" and "candidate X" are the same row). Dense inputs are the
real-time features from the Feast registry, then (``cross_features``) the user x candidate
neighbourhood features of :mod:`models.cross_features`. Sparse rows are trained with row-wise Adagrad
applied inside backward (TorchRec's fused-optimizer path, which works on CPU), dense weights
with Adagrad. The item table doubles as the retrieval signal: ``item_embeddings()``.

Speed: the tables produce SPARSE gradients (only the rows a batch looked up) and the in-backward
row-wise Adagrad updates just those rows. TorchRec's ``RowWiseAdagrad`` only takes dense
gradients, i.e. a zero-filled gradient the size of each table and an update sweeping every row on
every step (about 4x slower at 100k/50k buckets); :class:`SparseRowWiseAdagrad` is the same
optimizer (same state, same update) computed on the touched rows only. And each table is looked
up once for all its features (:class:`TableBatchedSparseArch`), so the shared item table gets one
sparse gradient per step instead of two that autograd would have to merge.
``DistributedModelParallel`` still sees ``RowWiseAdagrad`` and a plain ``EmbeddingBagCollection``
(same module paths, same ``state_dict`` keys) and runs fbgemm's exact row-wise Adagrad on its shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM, SparseArch
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter

from models.config import ModelSettings
from models.cross_features import N_CROSS
from models.id_table import ModelIds, id_rows

SPARSE_KEYS = ("user_id", "item_id", "recent_items")
USER_TABLE = "user"
ITEM_TABLE = "item"


def _summed_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse gradient's touched rows (ascending) and their summed values: ``coalesce()``
    without its sort (a mark per table row finds the touched ones; about 2.5x faster at 11k ids)."""
    if grad.is_coalesced() or grad.sparse_dim() != 1:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    ids, values = grad._indices()[0], grad._values()
    n = grad.shape[0]
    seen = torch.zeros(n, dtype=torch.bool, device=ids.device)
    seen[ids] = True
    rows = seen.nonzero().squeeze(1)
    slot = torch.empty(n, dtype=torch.long, device=ids.device)
    slot[rows] = torch.arange(rows.numel(), device=ids.device)
    return rows, values.new_zeros((rows.numel(), *values.shape[1:])).index_add_(0, slot[ids], values)


class SparseRowWiseAdagrad(RowWiseAdagrad):
    """TorchRec's :class:`RowWiseAdagrad`, also for sparse gradients: per touched row ``r`` with summed
    gradient ``g``: ``sum[r] += mean(g**2)``, ``w[r] -= lr_t * g / (sqrt(sum[r]) + eps)``.

    A dense gradient gives exactly the same result (its untouched rows are zero and do not move), so
    a dense gradient, or weight decay (which moves every row), goes to TorchRec's own step.
    """

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - the Optimizer.step signature
        if any(p.grad is not None and (not p.grad.is_sparse or group["weight_decay"] != 0)
               for group in self.param_groups for p in group["params"]):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.is_sparse:
                        p.grad = p.grad.to_dense()
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                clr = group["lr"] / (1 + (state["step"].item() - 1) * group["lr_decay"])
                rows, values = _summed_rows(p.grad)
                if group["maximize"]:
                    values = -values
                state_sum = state["sum"]
                state_sum.index_add_(0, rows, values.pow(2).mean(dim=1, keepdim=True))
                std = state_sum.index_select(0, rows).sqrt_().add_(group["eps"])
                p.index_add_(0, rows, values / std, alpha=-clr)
        return loss


class TableBatchedSparseArch(SparseArch):
    """DLRM's SparseArch, with one ``nn.EmbeddingBag`` call per table covering all the table's features.

    TorchRec's ``EmbeddingBagCollection.forward`` calls a table once per feature; for the item table
    (``item_id`` and ``recent_items``) that is two calls, two sparse gradients, and an autograd sparse
    add (sort + copy of every looked-up row) before the optimizer sees them. Same pooled values,
    same (B, F, D) output. Anything else than an unsharded, unweighted EBC over a fixed-stride KJT
    whose table features sit next to each other (e.g. the sharded module under
    DistributedModelParallel) goes through TorchRec's own forward.
    """

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        ebc = self.embedding_bag_collection
        if (type(ebc) is not EmbeddingBagCollection or ebc.is_weighted() or not isinstance(features, KeyedJaggedTensor)
                or features.variable_stride_per_key() or features.inverse_indices_or_none() is not None):
            return super().forward(features)
        index = {k: i for i, k in enumerate(features.keys())}
        b, values, offsets = features.stride(), features.values(), features.offsets()
        offset_per_key = features.offset_per_key()
        pooled: dict[str, torch.Tensor] = {}
        for table in ebc.embedding_bag_configs():
            ix = [index.get(f, -1) for f in table.feature_names]
            if ix[0] < 0 or ix != list(range(ix[0], ix[0] + len(ix))):
                return super().forward(features)
            lo, hi = ix[0], ix[-1] + 1
            start, end = offset_per_key[lo], offset_per_key[hi]
            bag_offsets = offsets[lo * b:hi * b + 1]
            out = ebc.embedding_bags[table.name](input=values[start:end],
                                                 offsets=bag_offsets - start if start else bag_offsets).float()
            for n, f in enumerate(table.feature_names):
                pooled[f] = out[n * b:(n + 1) * b]
        return torch.stack([pooled[f] for f in self.sparse_feature_names], dim=1)


def dense_width(cfg: ModelSettings, n_features: int) -> int:
    """The model's dense input width: the registry's ``n_features`` entity features, plus the cross features."""
    return n_features + (N_CROSS if cfg.cross_features else 0)


def build_model(cfg: ModelSettings, n_dense: int, table_device: str = "cpu") -> DLRM:
    """A fresh model with sparse rows trained in backward (call :func:`dense_optimizer` for the rest).
    ``n_dense`` counts the entity features; the cross features' columns are added here.

    ``table_device="meta"`` allocates no table memory and skips their random init, for a model
    whose weights are loaded right after with ``load_state_dict(state, assign=True)`` (serving)."""
    torch.manual_seed(cfg.seed)
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=USER_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=cfg.user_buckets,
                               feature_names=["user_id"]),
            EmbeddingBagConfig(name=ITEM_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=cfg.item_buckets,
                               feature_names=["item_id", "recent_items"]),
        ],
        device=torch.device(table_device),
    )
    model = DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=dense_width(cfg, n_dense),
        dense_arch_layer_sizes=list(cfg.dense_arch),
        over_arch_layer_sizes=[*cfg.over_arch, 1],
    )
    model.sparse_arch = TableBatchedSparseArch(ebc)  # same module path and parameters, one lookup per table
    for bag in ebc.embedding_bags.values():
        bag.sparse = True  # gradients hold only the looked-up rows, not a zero-filled copy of the table
    apply_optimizer_in_backward(SparseRowWiseAdagrad, ebc.parameters(), {"lr": cfg.sparse_lr})
    for p in ebc.parameters():
        # what DistributedModelParallel reads to pick fbgemm's kernel: the same exact row-wise Adagrad
        p._optimizer_classes = [RowWiseAdagrad]
    return model


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything not updated in backward, i.e. not an embedding table; works on a plain model and
    on a DistributedModelParallel-wrapped one (whose sharded tables carry their fused optimizer)."""
    return [p for _, p in in_backward_optimizer_filter(model.named_parameters())]


def dense_optimizer(model: nn.Module, cfg: ModelSettings) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(dense_parameters(model), lr=cfg.dense_lr)


def item_embeddings(model: DLRM) -> torch.Tensor:
    """The item table (rows = item buckets): the retrieval signal for candidate generation."""
    return model.sparse_arch.embedding_bag_collection.embedding_bags[ITEM_TABLE].weight.detach()


@dataclass
class Batch:
    dense: torch.Tensor  # (B, n_dense) float32
    sparse: KeyedJaggedTensor
    labels: torch.Tensor | None = None  # (B,) float32
    offsets: torch.Tensor | None = None  # (B,) added to the logits in a listwise loss (sampled softmax's log-q correction)
    weights: torch.Tensor | None = None  # (B,) loss weight per row (listwise: per list, read from its first row)

    @classmethod
    def build(cls, mapping: "ModelSettings | ModelIds", users: Sequence[str], items: Sequence[str],
              recent: Sequence[Sequence[str]], dense: torch.Tensor, labels: torch.Tensor | None = None) -> "Batch":
        """Map ids to rows (hashed for plain settings, else the version's ``ModelIds``) and lay them
        out as TorchRec expects (keys, then examples)."""
        n = len(users)
        if not (len(items) == len(recent) == n == dense.shape[0]):
            raise ValueError(f"batch parts disagree: {n} users, {len(items)} items, {len(recent)} recent lists, "
                             f"{dense.shape[0]} dense rows")
        flat_recent = [i for r in recent for i in r]
        ids = id_rows(mapping)
        return cls.from_rows(ids.users.rows(users), ids.items.rows(items), ids.items.rows(flat_recent),
                             torch.tensor([len(r) for r in recent], dtype=torch.long), dense, labels)

    @classmethod
    def one_user(cls, user_row: torch.Tensor, item_rows: torch.Tensor, recent_rows: torch.Tensor,
                 dense: torch.Tensor) -> "Batch":
        """One user against ``len(item_rows)`` items (ranking a candidate list): the user's row and
        recent-items bag repeated per item."""
        n = len(item_rows)
        return cls.from_rows(user_row.reshape(1).expand(n), item_rows, recent_rows.repeat(n),
                             torch.full((n,), len(recent_rows), dtype=torch.long), dense)

    @classmethod
    def from_rows(cls, user_rows: torch.Tensor, item_rows: torch.Tensor, recent_rows: torch.Tensor,
                  recent_lengths: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor | None = None) -> "Batch":
        """Ids already hashed into rows (hash once per dataset, not once per epoch)."""
        n = len(user_rows)
        lengths = torch.cat([torch.ones(2 * n, dtype=torch.long), recent_lengths.long()])
        values = torch.cat([user_rows.long(), item_rows.long(), recent_rows.long()])
        sparse = KeyedJaggedTensor.from_lengths_sync(keys=list(SPARSE_KEYS), values=values, lengths=lengths)
        return cls(dense.float(), sparse, None if labels is None else labels.float())


def predict(model: DLRM, batch: Batch) -> torch.Tensor:
    """Click/positive probabilities, shape (B,)."""
    with torch.no_grad():
        return torch.sigmoid(model(batch.dense, batch.sparse)).squeeze(-1)


def train_step(model: DLRM, optimizer: torch.optim.Optimizer, batch: Batch, group: int = 1) -> float:
    """One step: the sparse rows update inside backward, the dense weights here.

    ``group == 1``: binary cross-entropy per row. ``group > 1``: the batch is lists of ``group``
    consecutive rows, each one positive and its negatives, and the loss is the softmax
    cross-entropy of the positive within its list (listwise: the model learns to put the item
    the user took above the ones they were likely to be shown, which is what a top-K list needs).
    ``batch.offsets`` corrects for how the negatives were sampled (``batch.nightly.training_lists``);
    ``batch.weights`` (the event vocabulary's type weights) make a weighted mean of the losses."""
    if batch.labels is None:
        raise ValueError("train_step needs labels")
    optimizer.zero_grad()
    logits = model(batch.dense, batch.sparse).squeeze(-1)
    if group > 1:
        lists = (logits if batch.offsets is None else logits + batch.offsets).reshape(-1, group)
        target = batch.labels.reshape(-1, group).argmax(dim=1)
        if batch.weights is None:
            loss = nn.functional.cross_entropy(lists, target)
        else:
            w = batch.weights.reshape(-1, group)[:, 0]
            loss = (nn.functional.cross_entropy(lists, target, reduction="none") * w).sum() / w.sum()
    elif batch.weights is None:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    else:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights, reduction="sum") / batch.weights.sum()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
