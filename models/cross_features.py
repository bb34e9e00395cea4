"""User x candidate features from item similarity: how close a candidate is to what the user did.

Entity features (a user's counts, an item's popularity) cannot say "this film is what people who
watched your last three films watched next"; the neighbourhood can, and a ranker that sees it
beats the neighbourhood alone (docs/quality.md). Computed in one place for every caller (training
examples, the replay, the API's ranker), from a user's recent items (newest first) and a
:mod:`models.similarity` table:

=================  =====================================================================
``sim_last``        sim(newest item, candidate)
``sim_last5``       sum over the 5 newest items of decay**p * sim
``sim_recent``      the same over all recent items (the item-kNN score)
``sim_max``         the largest sim to any recent item
``log_cooccur``     log1p of the raw co-occurrence count with the recent items
``log_item_users``  log1p of the candidate's number of users (its support)
``log_knn_rank``    log1p of 1 + the candidate's rank in the user's item-kNN list
                    (log1p of 1 + the list's length when the list does not reach it)
=================  =====================================================================

Beside them, :func:`item_age` (``log_item_age_days``): how long the candidate has been in the
catalogue, from the table's first interaction times; an item the table has not seen is newer
than it and reads 0. (An item's age is the single signal that added most to the prototype
ranker: docs/quality.md.) And, with a catalogue, ``category_affinity`` (:mod:`models.categories`).
:func:`ranker_extras` says how to compute each of these optional inputs.

>>> from models.similarity import CoOccurrence
>>> co = CoOccurrence(pair_with=None)
>>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "z")]:
...     co.learn(user, item)
>>> f = cross_features(co, ["x"], ["y", "z", "new"])
>>> f[:, NAMES.index("sim_last")].astype(float).round(3).tolist()  # 2/sqrt(3*2), 1/sqrt(3*1), unknown item
[0.816, 0.577, 0.0]
>>> np.expm1(f[:, NAMES.index("log_knn_rank")].astype(float)).round().tolist()  # ranks 0 and 1 of 2 reached -> 1, 2; not reached -> 3
[1.0, 2.0, 3.0]
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np

from models.categories import CATEGORY_NAME, ItemCategories
from models.similarity import UNSEEN, Neighbours, distinct_indices
from streaming.events import DAY_MS

AGE_NAME = "log_item_age_days"
NAMES = ("sim_last", "sim_last5", "sim_recent", "sim_max", "log_cooccur", "log_item_users", "log_knn_rank")
N_CROSS = len(NAMES)
DECAY = 0.8  # chosen on the validation window with the item-kNN yardstick (docs/quality.md)
RECENT = 20


def cross_features(sim: Neighbours, recent: Sequence[Hashable], candidates: Sequence[Hashable],
                   decay: float = DECAY, newest_n: int = RECENT) -> np.ndarray:
    """(len(candidates), N_CROSS) float32, in :data:`NAMES` order."""
    n = len(candidates)
    out = np.zeros((n, N_CROSS), dtype=np.float32)
    if not n:
        return out
    cand = np.fromiter((sim.index.get(c, -1) for c in candidates), dtype=np.int64, count=n)
    known = cand >= 0
    support = np.zeros(n)
    support[known] = sim.users(cand[known])
    out[:, 5] = np.log1p(support)
    newest = distinct_indices(sim, recent)[:newest_n]
    parts = [(p, *sim.row(h)) for p, h in enumerate(newest)]
    parts = [(p, c, k) for p, c, k in parts if len(c)]
    if not parts:
        out[:, 6] = np.log1p(1.0)
        return out
    position = np.concatenate([np.full(len(c), p) for p, c, _ in parts])
    cols = np.concatenate([c for _, c, _ in parts])
    counts = np.concatenate([k for _, _, k in parts])
    h_users = np.maximum(sim.users(np.asarray(newest, dtype=np.int64)), 1.0)[position]
    sims = counts / (h_users ** sim.alpha * np.maximum(sim.users(cols), 1.0) ** (1 - sim.alpha))
    weighted = decay ** position * sims
    # the candidates' entries: which of the neighbours read are candidates (a candidate may repeat)
    unique, inverse = np.unique(np.where(known, cand, -1), return_inverse=True)
    at = np.minimum(np.searchsorted(unique, cols), len(unique) - 1)
    hit = unique[at] == cols
    slot, m = at[hit], len(unique)
    last = np.bincount(slot, weights=np.where(position[hit] == 0, sims[hit], 0.0), minlength=m)
    last5 = np.bincount(slot, weights=np.where(position[hit] < 5, weighted[hit], 0.0), minlength=m)
    total = np.bincount(slot, weights=weighted[hit], minlength=m)
    best = np.zeros(m)
    np.maximum.at(best, slot, sims[hit])
    cooccur = np.bincount(slot, weights=counts[hit], minlength=m)
    for column, values in enumerate((last, last5, total, best)):
        out[:, column] = values[inverse]
    out[:, 4] = np.log1p(cooccur[inverse])
    items, where = np.unique(cols, return_inverse=True)
    scores = np.sort(np.bincount(where, weights=weighted))
    mine = total[inverse]
    rank = len(scores) - np.searchsorted(scores, mine, side="right")  # items scored strictly higher
    out[:, 6] = np.log1p(np.where(mine > 0, rank + 1, len(scores) + 1))
    return out


def item_age(sim: Neighbours, candidates: Sequence[Hashable], now_ms: int) -> np.ndarray:
    """(len(candidates), 1) float32: log1p of the days from each candidate's first interaction to ``now_ms``.

    >>> from models.similarity import CoOccurrence
    >>> co = CoOccurrence()
    >>> co.learn("a", "old", 0); co.learn("b", "young", 86_400_000 * 6)
    >>> np.expm1(item_age(co, ["old", "young", "unseen"], 86_400_000 * 7)).round(3).ravel().tolist()
    [7.0, 1.0, 0.0]
    """
    n = len(candidates)
    idx = np.fromiter((sim.index.get(c, -1) for c in candidates), dtype=np.int64, count=n)
    first = np.full(n, UNSEEN, dtype=np.int64)
    known = idx >= 0
    first[known] = sim.first_seen(idx[known])
    days = np.where(first == UNSEEN, 0.0, np.maximum(now_ms - first, 0) / DAY_MS)
    return np.log1p(days).astype(np.float32).reshape(n, 1)


EXTRA_NAMES = (AGE_NAME, CATEGORY_NAME)  # every optional ranker input, in the order lists store them


def ranker_extras(sim: Neighbours, categories: ItemCategories | None, recent: Sequence[Hashable],
                  candidates: Sequence[Hashable], now_ms: int) -> dict[str, Callable[[], np.ndarray]]:
    """How each optional ranker input is computed for these candidates; ``models.list_ranker.for_ranker``
    computes only those the ranker reads (no catalogue: no category affinity to offer)."""
    extras: dict[str, Callable[[], np.ndarray]] = {AGE_NAME: lambda: item_age(sim, candidates, now_ms)}
    if categories is not None:
        extras[CATEGORY_NAME] = lambda: categories.affinity(recent, candidates, DECAY, RECENT)
    return extras


def all_extras(sim: Neighbours, categories: ItemCategories | None, recent: Sequence[Hashable],
               candidates: Sequence[Hashable], now_ms: int) -> np.ndarray:
    """(len(candidates), len(EXTRA_NAMES)): every optional input (0 where there is nothing to read), for
    training lists, which are made once and may train a ranker with any of them."""
    extras = ranker_extras(sim, categories, recent, candidates, now_ms)
    n = len(candidates)
    return np.hstack([extras[name]() if name in extras else np.zeros((n, 1), np.float32) for name in EXTRA_NAMES])
