"""Item-to-item similarity from co-occurrence in user histories: the neighbourhood signal.

Item-based collaborative filtering (Sarwar et al. 2001; Linden et al. 2003) is the strongest
simple recommender on most interaction logs, so the engine owns it as a model component:

* :class:`CoOccurrence` counts, event by event, how often two items occur in the same user's
  history: a user's new item co-occurs once with each of their previous ``pair_with`` distinct
  items. ``sim(i, j) = C(i, j) / (n_i**alpha * n_j**(1 - alpha))``, ``n`` = users per item
  (``alpha = 0.5``: cosine). Sparse: memory grows with the pairs seen, each event costs
  ``pair_with`` updates.
* :meth:`CoOccurrence.freeze` keeps each item's ``top_k`` most similar items as a
  :class:`SimilarityTable` (CSR arrays), which a model version saves beside its weights.
* Each item's first interaction time (``first_seen_ms``, when ``learn`` is given event times)
  goes into the table too: how long an item has been in the catalogue is a signal of its own
  (the ranker's item age, :mod:`models.cross_features`).
* :func:`neighbourhood` scores items for a user from their newest items (newest weighted most):
  the item-kNN recommender, the ``similar`` candidate source and the ranker's cross features
  (:mod:`models.cross_features`) all read it.

>>> co = CoOccurrence(pair_with=None)
>>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "y"), ("c", "z")]:
...     co.learn(user, item)
>>> table = co.freeze(top_k=1)
>>> [table.ids[j] for j in table.row(table.index["x"])[0]]  # x's most similar item (ties: lowest index)
['y']
>>> reached, scores = neighbourhood(co, [co.index["x"]], decay=1.0, recent=1)
>>> [co.ids[i] for i in reached], scores.round(3).tolist()  # C/sqrt(n_x n_j): 1/sqrt(2*2) each
(['y', 'z'], [0.5, 0.5])
>>> top_similar(co, ["x"], n=1, decay=1.0, newest_n=1)
['y']
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Protocol, Sequence

import numpy as np

SIMILARITY_FILE = "similarity.npz"
UNSEEN = -1  # first_seen_ms of an item whose first interaction time is not known
SIMILARITY_SOURCE = "similarity_version"  # meta key: the version whose file holds this one's table (online versions)


class Neighbours(Protocol):
    """What scoring needs: an item's co-occurring items with counts, and users per item."""

    ids: list | np.ndarray
    index: dict

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]: ...

    def users(self, items: np.ndarray) -> np.ndarray: ...

    @property
    def alpha(self) -> float: ...

    def first_seen(self, items: np.ndarray) -> np.ndarray: ...


class CoOccurrence:
    """Co-occurrence counts, updated after every interaction (the live, unbounded form)."""

    def __init__(self, pair_with: int | None = 20, alpha: float = 0.5) -> None:
        self.pair_with, self._alpha = pair_with, alpha
        self.ids: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self.counts: list[dict[int, float]] = []
        self._users = np.zeros(1024)
        self._first_seen = np.full(1024, UNSEEN, dtype=np.int64)
        self.history: dict[Hashable, list[int]] = {}  # distinct items per user, oldest first
        self._touched: dict[Hashable, set[int]] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def alpha(self) -> float:
        return self._alpha

    def item(self, item_id: Hashable) -> int:
        """The item's index (a new item gets the next one)."""
        i = self.index.get(item_id)
        if i is None:
            i = self.index[item_id] = len(self.ids)
            self.ids.append(item_id)
            self.counts.append({})
            if i >= len(self._users):
                self._users = np.concatenate([self._users, np.zeros(len(self._users))])
                self._first_seen = np.concatenate([self._first_seen, np.full(len(self._first_seen), UNSEEN)])
        return i

    def learn(self, user: Hashable, item_id: Hashable, t_ms: int | None = None) -> None:
        """``user`` interacted with ``item_id`` (at event time ``t_ms``, if known: the item's
        first time is kept; events come in time order)."""
        item = self.item(item_id)
        if t_ms is not None and self._first_seen[item] == UNSEEN:
            self._first_seen[item] = t_ms
        touched = self._touched.setdefault(user, set())
        if item in touched:
            return
        history = self.history.setdefault(user, [])
        previous = history if self.pair_with is None else history[-self.pair_with:]
        row = self.counts[item]
        for other in previous:
            row[other] = row.get(other, 0.0) + 1.0
            other_row = self.counts[other]
            other_row[item] = other_row.get(item, 0.0) + 1.0
            self._rows.pop(other, None)
        self._rows.pop(item, None)
        history.append(item)
        touched.add(item)
        self._users[item] += 1.0

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._rows.get(item)
        if arrays is None:
            row = self.counts[item]
            arrays = self._rows[item] = (np.fromiter(row.keys(), np.int64, len(row)),
                                         np.fromiter(row.values(), np.float64, len(row)))
        return arrays

    def users(self, items: np.ndarray) -> np.ndarray:
        return self._users[np.asarray(items, dtype=np.int64)]

    def first_seen(self, items: np.ndarray) -> np.ndarray:
        """Each item's first interaction time, ms (:data:`UNSEEN` where not known)."""
        return self._first_seen[np.asarray(items, dtype=np.int64)]

    def freeze(self, top_k: int = 200) -> "SimilarityTable":
        """Each item's ``top_k`` most similar items (by ``sim``), as immutable arrays."""
        n = self._users[:len(self.ids)]
        indptr, neighbours, counts = [0], [], []
        for i in range(len(self.ids)):
            cols, c = self.row(i)
            if len(cols) > top_k:
                sim = c / (n[i] ** self.alpha * np.maximum(n[cols], 1.0) ** (1 - self.alpha))
                keep = np.lexsort((cols, -sim))[:top_k]
                cols, c = cols[keep], c[keep]
            neighbours.append(cols)
            counts.append(c)
            indptr.append(indptr[-1] + len(cols))
        return SimilarityTable(np.asarray(self.ids, dtype=object), np.asarray(indptr, dtype=np.int64),
                               np.concatenate(neighbours) if neighbours else np.zeros(0, np.int64),
                               np.concatenate(counts) if counts else np.zeros(0), n.copy(), self.alpha,
                               first_seen_ms=self._first_seen[:len(self.ids)].copy())


class DailySimilarity:
    """Live counts, read through a table re-frozen every ``every_ms`` of event time: what a
    model version trained at the last boundary would hold. Training rows read this (never the
    counts of the future, and the same top-K truncation the API reads), and reading a frozen
    table is much cheaper than reading rows that change with every event."""

    def __init__(self, counts: CoOccurrence, top_k: int, every_ms: int) -> None:
        self.counts, self.top_k, self.every_ms = counts, top_k, every_ms
        self._table = SimilarityTable.empty()
        self._next_ms: int | None = None

    def learn(self, user: Hashable, item_id: Hashable, t_ms: int) -> None:
        self.table(t_ms)
        self.counts.learn(user, item_id, t_ms)

    def table(self, t_ms: int) -> "SimilarityTable":
        """The table as of the last boundary at or before ``t_ms``."""
        if self._next_ms is None:
            self._next_ms = t_ms + self.every_ms
        elif t_ms >= self._next_ms:
            self._table = self.freeze()
            while self._next_ms <= t_ms:
                self._next_ms += self.every_ms
        return self._table

    def freeze(self) -> "SimilarityTable":
        return self.counts.freeze(self.top_k)

    def start(self, t_ms: int) -> None:
        """Freeze now and again every ``every_ms`` from ``t_ms``: for a reader that needs no table
        before ``t_ms`` (each freeze reads every item's row, so skipped ones are saved work)."""
        self._table = self.freeze()
        self._next_ms = t_ms + self.every_ms


class SimilarityTable:
    """Top-K neighbours per item (CSR): what a model version ships and the API reads."""

    def __init__(self, ids: np.ndarray, indptr: np.ndarray, neighbours: np.ndarray, counts: np.ndarray,
                 n_users: np.ndarray, alpha: float, source: str | None = None,
                 first_seen_ms: np.ndarray | None = None) -> None:
        self.ids = ids
        self.source = source  # the registry version it was loaded from
        self.index = {item: i for i, item in enumerate(ids.tolist())}
        self.indptr, self.neighbours, self.counts, self.n_users = indptr, neighbours, counts, n_users
        self._alpha = alpha
        # (tables saved before item times were kept have none: every item reads as UNSEEN)
        self.first_seen_ms = np.full(len(ids), UNSEEN, np.int64) if first_seen_ms is None else first_seen_ms

    @property
    def alpha(self) -> float:
        return self._alpha

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.neighbours[lo:hi], self.counts[lo:hi]

    def users(self, items: np.ndarray) -> np.ndarray:
        return self.n_users[np.asarray(items, dtype=np.int64)]

    def first_seen(self, items: np.ndarray) -> np.ndarray:
        return self.first_seen_ms[np.asarray(items, dtype=np.int64)]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SIMILARITY_FILE
        np.savez(path, ids=self.ids.astype(str), indptr=self.indptr, neighbours=self.neighbours.astype(np.int32),
                 counts=self.counts.astype(np.float32), n_users=self.n_users.astype(np.float32), alpha=np.array(self.alpha),
                 first_seen_ms=self.first_seen_ms.astype(np.int64))
        return path

    @classmethod
    def load(cls, path: Path, source: str | None = None) -> "SimilarityTable":
        """A saved table (a corrupt or foreign file raises ValueError naming it)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["ids"].astype(object), f["indptr"], f["neighbours"].astype(np.int64),
                           f["counts"].astype(np.float64), f["n_users"].astype(np.float64), float(f["alpha"]), source,
                           f["first_seen_ms"].astype(np.int64) if "first_seen_ms" in f.files else None)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path} is not a readable similarity table ({e}): retrain to rewrite it") from e

    @classmethod
    def empty(cls) -> "SimilarityTable":
        return cls(np.zeros(0, dtype=object), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.5)


def neighbourhood(sim: Neighbours, newest: Sequence[int], decay: float, recent: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-kNN scores from a user's newest items (indices, newest first): ``sum_p decay**p *
    sim(h_p, j)`` over the first ``recent`` of them, for the items ``j`` they reach (sorted
    indices, scores > 0). Work grows with the neighbours read, not with the catalogue."""
    cols, weights = [], []
    for position, h in enumerate(newest[:recent]):
        c, counts = sim.row(h)
        if len(c):
            cols.append(c)
            weights.append(counts * (decay ** position / max(float(sim.users(np.array([h]))[0]), 1.0) ** sim.alpha))
    if not cols:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    reached, where = np.unique(np.concatenate(cols), return_inverse=True)
    scores = np.bincount(where, weights=np.concatenate(weights)) / np.maximum(sim.users(reached), 1.0) ** (1 - sim.alpha)
    return reached, scores


def top_similar(sim: Neighbours, recent: Sequence[Hashable], n: int, decay: float, newest_n: int,
                exclude: set | frozenset = frozenset()) -> list[Hashable]:
    """The ``n`` best item-kNN items (ids) for a user's recent items (ids, newest first), best
    first, skipping ``exclude`` (ties: lower index first)."""
    reached, scores = neighbourhood(sim, distinct_indices(sim, recent), decay, newest_n)
    if not len(reached) or n <= 0:
        return []
    want = min(len(reached), n + len(exclude))
    top = np.argpartition(-scores, want - 1)[:want] if want < len(reached) else np.arange(len(reached))
    top = top[np.lexsort((reached[top], -scores[top]))]
    out = [sim.ids[i] for i in reached[top] if sim.ids[i] not in exclude]
    return out[:n]


def distinct_indices(sim: Neighbours, items: Sequence[Hashable]) -> list[int]:
    """Indices of the known items among ``items`` (newest first), each once."""
    out, seen = [], set()
    for item in items:
        i = sim.index.get(item)
        if i is not None and i not in seen:
            seen.add(i)
            out.append(i)
    return out
