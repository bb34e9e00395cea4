"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), refit at every
retrain boundary on all interactions so far.

Closed form over the binary user x item matrix ``X``: ``P = (X^T X + lambda I)^-1``,
``B = -P / diag(P)`` column-wise with ``diag(B) = 0``; a user's scores are ``x_u B``. The inverse
is cubic in the number of items, so the model covers the ``max_items`` most interacted-with items
(the paper's data sets have up to ~40k); items outside it score by popularity alone, below every
covered item the user's history reaches.

>>> ease = EASE(l2=1.0)
>>> for user, items in {"a": [0, 1], "b": [0, 1], "c": [1, 2]}.items():
...     for item in items:
...         ease.learn(user, item, 0)
>>> ease.refit(0)
>>> ease.learn("d", 0, 0)
>>> np.argsort(-ease.scores("d", np.array([1, 2]))).tolist()  # 1 co-occurs with 0, 2 does not
[0, 1]
"""

from __future__ import annotations

import numpy as np

from models.baselines.growable import Growable

TIE_BREAK = 1e-9
USERS_PER_CHUNK = 4096


class EASE:
    def __init__(self, l2: float = 200.0, max_items: int = 20_000) -> None:
        self.l2, self.max_items = l2, max_items
        self.history: dict[str, set[int]] = {}
        self.users_per_item = Growable()
        self.weights: np.ndarray | None = None  # B over the covered items
        self.covered = np.zeros(0, dtype=np.int64)  # catalogue index of B's rows/columns
        self.position: dict[int, int] = {}
        self._column = np.zeros(0, dtype=np.int64)  # catalogue index -> column of B, -1 if not covered

    def learn(self, user: str, item: int, t_ms: int) -> None:
        seen = self.history.setdefault(user, set())
        if item not in seen:
            seen.add(item)
            self.users_per_item.add(item, 1.0)

    def refit(self, now_ms: int) -> None:
        counts = self.users_per_item.values
        covered = np.argsort(-counts, kind="stable")[:self.max_items]
        covered = covered[counts[covered] > 0]
        self.position = {int(i): p for p, i in enumerate(covered)}
        m = len(covered)
        gram = np.zeros((m, m), dtype=np.float64)
        users = list(self.history.values())
        for lo in range(0, len(users), USERS_PER_CHUNK):  # X^T X in chunks of users: memory stays m^2
            block = np.zeros((min(USERS_PER_CHUNK, len(users) - lo), m), dtype=np.float32)
            for r, seen in enumerate(users[lo:lo + USERS_PER_CHUNK]):
                cols = [self.position[i] for i in seen if i in self.position]
                block[r, cols] = 1.0
            gram += block.T.astype(np.float64) @ block
        gram[np.diag_indices(m)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices(m)] = 0.0
        self.weights, self.covered = weights.astype(np.float32), covered
        self._column = np.full(len(counts), -1, dtype=np.int64)
        self._column[covered] = np.arange(m)

    def scores(self, user: str, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        base = TIE_BREAK * self.users_per_item.take(items)
        rows = [self.position[i] for i in self.history.get(user, ()) if i in self.position]
        if self.weights is None or not rows:
            return base
        profile = self.weights[rows].sum(axis=0)
        cols = np.full(len(items), -1, dtype=np.int64)
        known = items < len(self._column)
        cols[known] = self._column[items[known]]
        inside = cols >= 0
        out = base.copy()
        out[inside] += profile[cols[inside]]
        out[~inside] += profile.min(initial=0.0) - 1.0 if inside.any() else 0.0
        return out
