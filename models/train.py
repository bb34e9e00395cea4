"""The training loop: examples -> seeded mini-batches -> epochs of ``train_step``, with progress.

Examples are plain arrays (ids as strings, dense features already transformed, recent-item bags),
so the same loop serves the nightly job and any other caller. Same examples + seed -> the same
batches in the same order -> the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from models.config import ModelSettings
from models.id_table import ModelIds, id_rows
from models.ranking import Batch, train_step


@dataclass
class Examples:
    users: np.ndarray  # (n,) str
    items: np.ndarray  # (n,) str
    recent: list[list[str]]
    dense: np.ndarray  # (n, n_dense) float32
    labels: np.ndarray | None = None  # (n,) float32
    group: int = 1  # rows per list (listwise training: a positive, then its negatives); 1 = independent rows
    offsets: np.ndarray | None = None  # (n,) float32: listwise logit corrections of sampled negatives
    weights: np.ndarray | None = None  # (n,) float32 loss weight of each row (a list's: its first row's); None = all 1

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: np.ndarray) -> "Examples":
        return Examples(self.users[index], self.items[index], [self.recent[i] for i in index], self.dense[index],
                        None if self.labels is None else self.labels[index], self.group,
                        None if self.offsets is None else self.offsets[index],
                        None if self.weights is None else self.weights[index])

    def batches(self, mapping: "ModelSettings | ModelIds", batch_size: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """Mini-batches in a seeded random order (``rng``) or in row order (``rng=None``); ids are
        mapped to rows once (hashed for plain settings, else the ``ModelIds``), not once per epoch."""
        rows = self._rows(id_rows(mapping))
        g = self.group
        if rng is not None:  # whole lists move together
            order = (rng.permutation(len(self) // g)[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        else:
            order = np.arange(len(self))
        batch_size = max(g, batch_size // g * g)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            lengths = rows["recent_lengths"][index]
            starts = rows["recent_offsets"][index]
            gather = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
            labels = None if self.labels is None else torch.from_numpy(self.labels[index].astype(np.float32))
            batch = Batch.from_rows(torch.from_numpy(rows["users"][index]), torch.from_numpy(rows["items"][index]),
                                    torch.from_numpy(rows["recent"][gather]), torch.from_numpy(lengths),
                                    torch.from_numpy(self.dense[index]), labels)
            if self.offsets is not None:
                batch.offsets = torch.from_numpy(self.offsets[index])
            if self.weights is not None:
                batch.weights = torch.from_numpy(self.weights[index].astype(np.float32))
            yield batch

    def _rows(self, ids: ModelIds) -> dict[str, np.ndarray]:
        key = ids.key
        if getattr(self, "_rows_key", None) != key:
            lengths = np.array([len(r) for r in self.recent], dtype=np.int64)
            self._rows_cache = {
                "users": ids.users.rows(self.users).numpy(),
                "items": ids.items.rows(self.items).numpy(),
                "recent": ids.items.rows([i for r in self.recent for i in r]).numpy(),
                "recent_lengths": lengths,
                "recent_offsets": np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            }
            self._rows_key = key
        return self._rows_cache


@dataclass
class TrainLog:
    epoch_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    step_loss: list[float] = field(default_factory=list)  # every step, for the loss curve
    samples: int = 0
    seconds: float = 0.0


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: Examples, cfg: ModelSettings,
        epochs: int, batch_size: int, seed: int, progress: bool = True, ids: ModelIds | None = None) -> TrainLog:
    """Train in place for ``epochs`` passes (rows from ``ids``, hashed by default); returns the losses."""
    import time

    rng = np.random.default_rng(seed)
    log = TrainLog()
    model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        losses = []
        n_batches = (len(examples) + batch_size - 1) // batch_size
        bar = tqdm(examples.batches(ids or cfg, batch_size, rng), total=n_batches, desc=f"epoch {epoch + 1}/{epochs}",
                   unit="batch", disable=None if progress else True)
        for batch in bar:
            losses.append(train_step(model, optimizer, batch, examples.group))
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        log.step_loss.extend(losses)
        log.epoch_loss.append(float(np.mean(losses)) if losses else float("nan"))
        log.samples += len(examples)
    log.seconds = time.perf_counter() - started
    model.eval()
    return log
