"""Item-based k-nearest neighbours, updated after every event (item-to-item CF: Sarwar et al. 2001,
Linden et al. 2003), the neighbourhood method sequential recommenders are usually measured against.

* Co-occurrence ``C(i, j)``: when a user touches a new item, it co-occurs once with each of the
  user's previous ``pair_with`` distinct items (``None``: the whole history).
* Similarity ``sim(i, j) = C(i, j) / (n_i^alpha * n_j^(1 - alpha))`` with ``n`` the number of users
  who touched the item (``alpha = 0.5``: cosine).
* A user's score for a candidate ``j``: ``sum_p decay^p * sim(h_p, j)`` over the user's ``recent``
  newest distinct items ``h_0, h_1, ...`` (newest first), plus a vanishing popularity term that
  orders what no neighbour reaches (a new user gets popular items).

The counts and the scoring are the engine's own (``models.similarity``), so the yardstick and
the engine's neighbourhood features cannot disagree on what item-kNN means.

>>> knn = ItemKNN(recent=2, decay=0.5, pair_with=None)
>>> for user, item in [("a", 0), ("a", 1), ("b", 0), ("b", 2), ("c", 1), ("c", 2), ("c", 3)]:
...     knn.learn(user, item, 0)
>>> scores = knn.scores("a", np.array([2, 3]))  # a's newest is 1 (weight 1), then 0 (weight 0.5)
>>> [round(s, 4) for s in scores.tolist()]  # sim(1,2)=1/2, sim(0,2)=1/2; sim(1,3)=1/sqrt(2), sim(0,3)=0
[0.75, 0.7071]
"""

from __future__ import annotations

import numpy as np

from models.similarity import CoOccurrence, neighbourhood

TIE_BREAK = 1e-9  # popularity only orders items no neighbour reaches


class ItemKNN:
    def __init__(self, recent: int = 20, decay: float = 0.8, pair_with: int | None = 20, alpha: float = 0.5) -> None:
        self.recent, self.decay = recent, decay
        self.co = CoOccurrence(pair_with, alpha)
        self._position = np.full(1024, -1, dtype=np.int64)  # catalogue index -> co-occurrence index

    @property
    def counts(self) -> list[dict[int, float]]:
        return self.co.counts

    def learn(self, user: str, item: int, t_ms: int) -> None:
        if item >= len(self._position):
            self._position = np.concatenate([self._position, np.full(max(item + 1, len(self._position)), -1)])
        self._position[item] = self.co.item(item)
        self.co.learn(user, item)

    def refit(self, now_ms: int) -> None:
        return None

    def scores(self, user: str, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        position = np.where(items < len(self._position), self._position[np.minimum(items, len(self._position) - 1)], -1)
        known = position >= 0
        out = np.zeros(len(items))
        n = np.zeros(len(items))
        n[known] = self.co.users(position[known])
        newest = self.co.history.get(user, [])[::-1]
        if newest:
            reached, scores = neighbourhood(self.co, newest, self.decay, self.recent)
            total = np.zeros(len(self.co.ids))
            total[reached] = scores
            out[known] = total[position[known]]
        return out + TIE_BREAK * n
