"""Offline evaluation: AUC / log loss on held-out labelled rows, and top-K with full-catalogue ranking.

Top-K: for each user with positives in the validation period, every catalogue item the user had
not interacted with before is scored and ranked; HR@K says whether any held-out positive is in
the top K, NDCG@K how high they are. The popularity baseline ranks the same candidates by
training-period positive count, in the same report.

>>> round(auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])), 2)
0.75
>>> hits_and_ndcg(["a", "b", "c"], {"b"}, k=2)
(1.0, 0.6309297535714575)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN with one class only."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def hits_and_ndcg(ranked: Sequence[str], relevant: set[str], k: int) -> tuple[float, float]:
    top = list(ranked[:k])
    gains = [1.0 / np.log2(i + 2) for i, item in enumerate(top) if item in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))
    return (1.0 if gains else 0.0), float(sum(gains) / ideal if ideal else 0.0)


@dataclass
class TopK:
    hr: float
    ndcg: float
    users: int
    per_user: dict[str, np.ndarray] | None = None  # "hr_at_k" / "ndcg_at_k" -> one value per user, in user order


def paired_worse(new: np.ndarray, old: np.ndarray, tolerance: float, z: float = 2.0) -> tuple[bool, float, float]:
    """Is ``new`` worse than ``old`` (per-user values of the same users) by more than
    ``max(tolerance, z * standard error of the mean paired difference)``? Returns (worse, mean
    difference, margin). A few dozen validation users make top-K metrics noisy: two models
    trained on the same data a day apart differ by more than a fixed 0.01 by chance.

    >>> worse, diff, margin = paired_worse(np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0, 0.0]), 0.01)
    >>> worse, diff, round(margin, 3)
    (False, 0.0, 0.816)
    >>> paired_worse(np.zeros(50), np.full(50, 0.2), 0.01)[0]
    True
    """
    d = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    if len(d) == 0:
        return False, 0.0, tolerance
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    margin = max(tolerance, z * se)
    return bool(d.mean() < -margin), float(d.mean()), margin


def top_k(score_user: Callable[[int, np.ndarray], np.ndarray], users: Sequence[str], catalogue: np.ndarray,
          relevant: Mapping[str, set[str]], seen: Mapping[str, set[str]], k: int) -> TopK:
    """``score_user(user_index, candidate_indices)`` scores candidates; higher is better."""
    hrs, ndcgs = [], []
    for u_index, user in enumerate(users):
        known = seen.get(user, set())
        candidates = np.array([i for i, item in enumerate(catalogue) if item not in known])
        if not len(candidates):
            continue
        scores = score_user(u_index, candidates)
        best = candidates[np.argsort(-scores, kind="stable")[:k]]
        hr, ndcg = hits_and_ndcg([catalogue[i] for i in best], relevant[user], k)
        hrs.append(hr)
        ndcgs.append(ndcg)
    return TopK(float(np.mean(hrs)) if hrs else float("nan"), float(np.mean(ndcgs)) if ndcgs else float("nan"), len(hrs),
                {"hr_at_k": np.array(hrs), "ndcg_at_k": np.array(ndcgs)})
