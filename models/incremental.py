"""A model that keeps training, a few examples at a time: the streaming trainer's (and the
prequential evaluation's) online model.

Embedding rows train with row-wise Adagrad in backward (a fresh optimizer state, at the online
rate); the dense weights only when asked (``train_dense``), otherwise they stay as the nightly
job left them, so a delta carries embedding rows only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from infra.settings import ModelSettings
from models.ids import bucket_tensor
from models.ranking import Batch, build_model, dense_optimizer, item_embeddings, train_step

Row = tuple[str, str, float, list[str], np.ndarray]  # user, item, label, recent items, dense inputs


class _NoDenseStep:
    """Stands in for the dense optimizer when the dense weights are frozen."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def step(self, closure=None):  # noqa: ANN001, ANN201 - the Optimizer.step signature
        return None


class IncrementalModel:
    def __init__(self, state: Mapping[str, torch.Tensor], cfg: ModelSettings, n_dense: int, sparse_lr: float,
                 train_dense: bool, batch_size: int) -> None:
        self.cfg = cfg.model_copy(update={"sparse_lr": sparse_lr})
        self.model = build_model(self.cfg, n_dense)
        self.model.load_state_dict(dict(state), strict=True)
        self.model.train()
        if train_dense:
            self.optimizer = dense_optimizer(self.model, self.cfg)
        else:
            for name, p in self.model.named_parameters():
                if "embedding_bags" not in name:
                    p.requires_grad_(False)
            self.optimizer = _NoDenseStep()
        self.batch_size = batch_size
        self.pending: list[Row] = []
        self.steps = 0

    def add(self, rows: Sequence[Row]) -> None:
        """Queue examples; a step runs whenever ``batch_size`` are queued."""
        self.pending.extend(rows)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Train on whatever is queued."""
        if not self.pending:
            return
        users, items, labels, recent, dense = zip(*self.pending)
        batch = Batch.build(self.cfg, list(users), list(items), list(recent), torch.from_numpy(np.stack(dense)),
                            torch.tensor(labels, dtype=torch.float32))
        train_step(self.model, self.optimizer, batch)
        self.pending = []
        self.steps += 1

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights (training goes on in place)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def warm_start(self, item_id: str, like: Sequence[str], taken_rows: set[int]) -> bool:
        """Set a new item's row to the mean of the rows of ``like`` (e.g. the most trained-on items),
        unless its row is in ``taken_rows`` (another known item hashes there). Returns whether it did."""
        row = int(bucket_tensor([item_id], self.cfg.item_buckets)[0])
        if row in taken_rows or not like:
            return False
        table = item_embeddings(self.model)  # a detached view of the live table
        with torch.no_grad():
            table[row] = table.index_select(0, bucket_tensor(list(like), self.cfg.item_buckets)).mean(dim=0)
        return True
