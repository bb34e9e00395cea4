"""The TorchRec ranking model: DLRM over user id, item id and the user's recent items.

Sparse inputs are a KeyedJaggedTensor with three keys: ``user_id`` (one id), ``item_id`` (one
id, the candidate) and ``recent_items`` (a bag of the user's last items, multi-hot; it shares
the item table, so "recently seen X" and "candidate X" are the same row). Dense inputs are the
real-time features from the Feast registry. Sparse rows are trained with row-wise Adagrad
applied inside backward (TorchRec's fused-optimizer path, which works on CPU), dense weights
with Adagrad. The item table doubles as the retrieval signal: ``item_embeddings()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from infra.settings import ModelSettings
from models.ids import bucket_tensor

SPARSE_KEYS = ("user_id", "item_id", "recent_items")
USER_TABLE = "user"
ITEM_TABLE = "item"


def build_model(cfg: ModelSettings, n_dense: int) -> DLRM:
    """A fresh model with sparse rows trained in backward (call :func:`dense_optimizer` for the rest)."""
    torch.manual_seed(cfg.seed)
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=USER_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=cfg.user_buckets,
                               feature_names=["user_id"]),
            EmbeddingBagConfig(name=ITEM_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=cfg.item_buckets,
                               feature_names=["item_id", "recent_items"]),
        ],
        device=torch.device("cpu"),
    )
    model = DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=n_dense,
        dense_arch_layer_sizes=list(cfg.dense_arch),
        over_arch_layer_sizes=[*cfg.over_arch, 1],
    )
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": cfg.sparse_lr})
    return model


def dense_parameters(model: DLRM) -> list[nn.Parameter]:
    sparse = {id(p) for p in model.sparse_arch.parameters()}
    return [p for p in model.parameters() if id(p) not in sparse]


def dense_optimizer(model: DLRM, cfg: ModelSettings) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(dense_parameters(model), lr=cfg.dense_lr)


def item_embeddings(model: DLRM) -> torch.Tensor:
    """The item table (rows = item buckets): the retrieval signal for candidate generation."""
    return model.sparse_arch.embedding_bag_collection.embedding_bags[ITEM_TABLE].weight.detach()


@dataclass
class Batch:
    dense: torch.Tensor  # (B, n_dense) float32
    sparse: KeyedJaggedTensor
    labels: torch.Tensor | None = None  # (B,) float32

    @classmethod
    def build(cls, cfg: ModelSettings, users: Sequence[str], items: Sequence[str], recent: Sequence[Sequence[str]],
              dense: torch.Tensor, labels: torch.Tensor | None = None) -> "Batch":
        """Hash ids into rows and lay them out as TorchRec expects (keys, then examples)."""
        n = len(users)
        if not (len(items) == len(recent) == n == dense.shape[0]):
            raise ValueError(f"batch parts disagree: {n} users, {len(items)} items, {len(recent)} recent lists, "
                             f"{dense.shape[0]} dense rows")
        flat_recent = [i for r in recent for i in r]
        values = torch.cat([bucket_tensor(users, cfg.user_buckets), bucket_tensor(items, cfg.item_buckets),
                            bucket_tensor(flat_recent, cfg.item_buckets)])
        lengths = torch.cat([torch.ones(2 * n, dtype=torch.long), torch.tensor([len(r) for r in recent], dtype=torch.long)])
        sparse = KeyedJaggedTensor.from_lengths_sync(keys=list(SPARSE_KEYS), values=values, lengths=lengths)
        return cls(dense.float(), sparse, None if labels is None else labels.float())


def predict(model: DLRM, batch: Batch) -> torch.Tensor:
    """Click/positive probabilities, shape (B,)."""
    with torch.no_grad():
        return torch.sigmoid(model(batch.dense, batch.sparse)).squeeze(-1)


def train_step(model: DLRM, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One step: the sparse rows update inside backward, the dense weights here."""
    if batch.labels is None:
        raise ValueError("train_step needs labels")
    optimizer.zero_grad()
    logits = model(batch.dense, batch.sparse).squeeze(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    loss.backward()
    optimizer.step()
    return float(loss)
