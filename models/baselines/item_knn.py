"""Item-based k-nearest neighbours, updated after every event (item-to-item CF: Sarwar et al. 2001,
Linden et al. 2003), the neighbourhood method sequential recommenders are usually measured against.

* Co-occurrence ``C(i, j)``: when a user touches a new item, it co-occurs once with each of the
  user's previous ``pair_with`` distinct items (``None``: the whole history).
* Similarity ``sim(i, j) = C(i, j) / (n_i^alpha * n_j^(1 - alpha))`` with ``n`` the number of users
  who touched the item (``alpha = 0.5``: cosine).
* A user's score for a candidate ``j``: ``sum_p decay^p * sim(h_p, j)`` over the user's ``recent``
  newest distinct items ``h_0, h_1, ...`` (newest first), plus a vanishing popularity term that
  orders what no neighbour reaches (a new user gets popular items).

Sparse (a dict of neighbour counts per item), so memory grows with the pairs seen, not with the
catalogue squared, and each event costs ``pair_with`` updates.

>>> knn = ItemKNN(recent=2, decay=0.5, pair_with=None)
>>> for user, item in [("a", 0), ("a", 1), ("b", 0), ("b", 2), ("c", 1), ("c", 2), ("c", 3)]:
...     knn.learn(user, item, 0)
>>> scores = knn.scores("a", np.array([2, 3]))  # a's newest is 1 (weight 1), then 0 (weight 0.5)
>>> [round(s, 4) for s in scores.tolist()]  # sim(1,2)=1/2, sim(0,2)=1/2; sim(1,3)=1/sqrt(2), sim(0,3)=0
[0.75, 0.7071]
"""

from __future__ import annotations

import numpy as np

from models.baselines.growable import Growable

TIE_BREAK = 1e-9  # popularity only orders items no neighbour reaches


class ItemKNN:
    def __init__(self, recent: int = 20, decay: float = 0.8, pair_with: int | None = 20, alpha: float = 0.5) -> None:
        self.recent, self.decay, self.pair_with, self.alpha = recent, decay, pair_with, alpha
        self.counts: dict[int, dict[int, float]] = {}  # item -> {co-occurring item: count}
        self.users_per_item = Growable()
        self.history: dict[str, list[int]] = {}  # distinct items per user, oldest first
        self._touched: dict[str, set[int]] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # item -> (neighbours, counts) as arrays

    def learn(self, user: str, item: int, t_ms: int) -> None:
        touched = self._touched.setdefault(user, set())
        if item in touched:
            return
        history = self.history.setdefault(user, [])
        previous = history if self.pair_with is None else history[-self.pair_with:]
        row = self.counts.setdefault(item, {})
        for other in previous:
            row[other] = row.get(other, 0.0) + 1.0
            other_row = self.counts.setdefault(other, {})
            other_row[item] = other_row.get(item, 0.0) + 1.0
            self._rows.pop(other, None)
        self._rows.pop(item, None)
        history.append(item)
        touched.add(item)
        self.users_per_item.add(item, 1.0)

    def refit(self, now_ms: int) -> None:
        return None

    def _row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._rows.get(item)
        if arrays is None:
            row = self.counts.get(item, {})
            arrays = self._rows[item] = (np.fromiter(row.keys(), np.int64, len(row)),
                                         np.fromiter(row.values(), np.float64, len(row)))
        return arrays

    def scores(self, user: str, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        n = np.maximum(self.users_per_item.take(items), 1.0)
        newest = self.history.get(user, [])[::-1][:self.recent]
        if not newest:
            return TIE_BREAK * n
        size = int(max(items.max(initial=0), max(newest))) + 1
        total = np.zeros(size)
        for position, h in enumerate(newest):
            neighbours, counts = self._row(h)
            if len(neighbours):
                keep = neighbours < size
                weight = self.decay ** position / max(self.users_per_item.take(np.array([h]))[0], 1.0) ** self.alpha
                np.add.at(total, neighbours[keep], weight * counts[keep])
        return total[items] / n ** (1 - self.alpha) + TIE_BREAK * n
