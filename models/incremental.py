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

from models.config import ModelSettings
from models.id_table import SHARED_ROW, ModelIds, id_rows
from models.ranking import ITEM_TABLE, USER_TABLE, Batch, build_model, dense_optimizer, train_step

Row = tuple[str, str, float, list[str], np.ndarray, float, float]  # user, item, label, recent items, dense inputs, logit offset, loss weight


class _NoDenseStep:
    """Stands in for the dense optimizer when the dense weights are frozen."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def step(self, closure=None):  # noqa: ANN001, ANN201 - the Optimizer.step signature
        return None


class IncrementalModel:
    def __init__(self, state: Mapping[str, torch.Tensor], cfg: ModelSettings, n_dense: int, sparse_lr: float,
                 train_dense: bool, batch_size: int, ids: ModelIds | None = None, group: int = 1) -> None:
        """``group > 1``: examples come in lists of that many rows (a positive, then its negatives)
        and are trained with the listwise loss, as the nightly model was."""
        self.cfg = cfg.model_copy(update={"sparse_lr": sparse_lr})
        self.ids = ids or id_rows(cfg)
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
        self.group = group
        self.batch_size = max(group, batch_size // group * group)
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
        users, items, labels, recent, dense, offsets, weights = zip(*self.pending)
        batch = Batch.build(self.ids, list(users), list(items), list(recent), torch.from_numpy(np.stack(dense)),
                            torch.tensor(labels, dtype=torch.float32))
        batch.offsets = torch.tensor(offsets, dtype=torch.float32)
        if any(w != 1.0 for w in weights):
            batch.weights = torch.tensor(weights, dtype=torch.float32)
        train_step(self.model, self.optimizer, batch, self.group)
        self.pending = []
        self.steps += 1

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights (training goes on in place)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def start_item(self, item_id: str, popular: Sequence[str], known_rows: set[int]) -> None:
        """A hashed item new to the catalogue: its row starts at the mean of ``popular`` items' rows,
        unless another known item already hashes there (``known_rows``, updated here)."""
        row = int(self.ids.items.rows([item_id])[0])
        if self.ids.managed or row in known_rows:
            return  # managed rows are started at admission (:meth:`admit`)
        known_rows.add(row)
        self.init_row(ITEM_TABLE, row, self.ids.items.rows(popular))

    def admit(self, event_user: str, event_item: str, t_ms: int, popular: Sequence[str]) -> None:
        """Managed ids: count the event's user and item; a newly admitted user starts at the shared
        row (what an unknown user looked like), a newly admitted item at popular items' mean."""
        if not self.ids.managed:
            return
        if (row := self.ids.users.observe(event_user, t_ms)) is not None:
            self.init_row(USER_TABLE, row, torch.tensor([SHARED_ROW]))
        if (row := self.ids.items.observe(event_item, t_ms)) is not None:
            self.init_row(ITEM_TABLE, row, self.ids.items.rows([p for p in popular if p != event_item]))

    def expire(self, now_ms: int) -> None:
        """Managed ids: rows of ids unseen for ``model.id_ttl_days`` of event time go back to the free list."""
        if self.ids.managed:
            self.ids.users.expire(now_ms)
            self.ids.items.expire(now_ms)

    def init_row(self, table: str, row: int, like_rows: torch.Tensor) -> None:
        """Start a row (a new item's, a newly admitted id's) at the mean of ``like_rows`` of the same
        table instead of its random init or a previous owner's values."""
        if not len(like_rows):
            return
        weights = self.model.sparse_arch.embedding_bag_collection.embedding_bags[table].weight
        with torch.no_grad():
            weights[row] = weights.detach().index_select(0, like_rows).mean(dim=0)
