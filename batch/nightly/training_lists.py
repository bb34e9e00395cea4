"""Listwise training lists: each positive with the items it beat, and their neighbourhood features.

A top-K list is won against the items the candidate sources put next to the one the user took,
not against random catalogue items. So each positive event makes one list of
``1 + hard_negatives + negatives_per_positive`` items: the item taken, negatives drawn from
what the candidate sources would propose (the user's item-kNN list over the similarity table a
retrain would have frozen at the last day boundary, never the future; then popular items),
then uniform draws from the catalogue so far. Every list has the
same size, so training reshapes a batch into lists (``models.ranking.train_step``).

:func:`list_items` picks one list (the streaming examples of ``batch.event_examples`` call it
per event); :func:`fold` makes all lists of an events table in one pass in time order (the
nightly job), with the cross features of every row as of its event.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from infra.settings import Settings, TrainingSettings
from models.categories import ItemCategories
from models.cross_features import DECAY, EXTRA_NAMES, NAMES, RECENT, all_extras, cross_features
from models.list_ranker import PADDING
from models.similarity import CoOccurrence, DailySimilarity, Neighbours, SimilarityTable, distinct_indices, neighbourhood
from streaming.events import DAY_MS

CROSS_COLUMNS = [f"cross_{n}" for n in NAMES]


RANK_SMOOTHING = 10.0  # hard negatives are drawn with q(r) ~ 1 / (r + this) over the pool's ranks r


def ranker_list_settings(settings: Settings) -> TrainingSettings:
    """The candidate ranker's lists are what the API ranks: the item taken, when the user's
    item-kNN list (``serving.similar_candidates``) or the popular items
    (``serving.popular_candidates``) proposed it, and all the others they proposed. Training on a
    target the sources never proposed teaches the ranker that items outside the pool win (measured:
    docs/quality.md)."""
    s = settings.serving
    return settings.training.model_copy(update={
        "hard_sampling": "full", "hard_pool": s.similar_candidates, "popular_pool": s.popular_candidates,
        "hard_negatives": s.similar_candidates + s.popular_candidates, "negatives_per_positive": 0})


def list_size(cfg: TrainingSettings) -> int:
    return 1 + cfg.hard_negatives + cfg.negatives_per_positive


def list_items(cfg: TrainingSettings, target: str, recent: list[str], seen: set | frozenset, sim: Neighbours | None,
               items: list[str], known: dict | set, popular: list[str],
               rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """``target`` and its negatives (``list_size`` items) with each row's logit offset, or
    ``([], [])`` when the catalogue ``items`` has nothing else to offer.

    Negatives avoid what the user has ``seen`` (the candidate sources filter it, so it is no
    contrast) and the ``recent`` items. The pool is what the candidate sources would propose: the
    user's item-kNN list (``hard_pool`` items, best first), then the ``popular`` items. Hard
    negatives are drawn from it with probability ``q(r) ~ 1 / (r + RANK_SMOOTHING)`` by rank, with
    the sampled softmax's correction ``-log(k q(r))`` as their offset: close to the softmax over
    the whole pool (measured: docs/quality.md), at a tenth of the rows."""
    size = list_size(cfg)
    full = cfg.hard_sampling == "full"
    avoid = set(recent) | ({target} if not full else set())
    out, offsets = [target], [0.0]
    if cfg.hard_negatives:
        pool: list[str] = []
        if sim is not None and len(sim.ids):
            reached, scores = neighbourhood(sim, distinct_indices(sim, recent), DECAY, RECENT)
            order = reached[np.lexsort((reached, -scores))]
            for j in order:
                i = sim.ids[j]
                if i not in avoid and i not in seen and i in known:
                    pool.append(i)
                    if len(pool) >= cfg.hard_pool:
                        break
        taken = set(pool)
        pool += [i for i in popular if i not in avoid and i not in seen and i not in taken]
        if full:
            if target not in pool:  # the API would not have proposed it: nothing to rank
                return [], []
            pool = [i for i in pool if i != target][:cfg.hard_negatives]
            avoid.add(target)
            out += pool
            offsets += [0.0] * len(pool) + [PADDING] * (cfg.hard_negatives - len(pool))
            out += [target] * (cfg.hard_negatives - len(pool))  # padding rows: their offset takes them out of the softmax
        elif pool:
            w = 1.0 / (np.arange(len(pool)) + RANK_SMOOTHING)
            q = w / w.sum()
            k = cfg.hard_negatives
            picked = rng.choice(len(pool), size=k, replace=True, p=q)
            out += [pool[j] for j in picked]
            offsets += (-np.log(k * q[picked])).tolist()
    want = size - len(out)
    if want > 0 and items:
        taken = set(out)
        draws = rng.integers(0, len(items), size=want * 3)
        fresh = [c for c in dict.fromkeys(items[d] for d in draws) if c not in avoid and c not in seen and c not in taken]
        out += fresh[:want]
    if len(out) < size:  # a tiny catalogue: repeat draws so every list has the same size
        pool = [c for c in items if c not in avoid] or [c for c in items if c != target]
        if not pool:
            return [], []
        out += [pool[d] for d in rng.integers(0, len(pool), size=size - len(out))]
    offsets += [0.0] * (len(out) - len(offsets))
    return out, offsets


class Popular:
    """The catalogue's most-labelled items, re-ranked every ``every`` updates (not per event)."""

    def __init__(self, n: int = 50, every: int = 1000) -> None:
        self.n, self.every = n, every
        self.counts: dict[str, int] = {}
        self.top: list[str] = []
        self._since = 0

    def add(self, item: str) -> None:
        self.counts[item] = self.counts.get(item, 0) + 1
        self._since += 1
        if self._since >= self.every or len(self.top) < self.n:
            self.top = heapq.nlargest(self.n, self.counts, key=self.counts.__getitem__)
            self._since = 0


@dataclass
class Lists:
    frame: pd.DataFrame  # list, position, user_id, item_id, event_time, label, offset, cross_* columns
    at_cutoff: SimilarityTable  # the table as of the first validation event (for evaluating without look-ahead)
    final: SimilarityTable  # the table over every event (what the version serves)


def fold(settings: Settings, events: pd.DataFrame, is_list_head: np.ndarray, cutoff_ms: int,
         progress: bool = False, lists: TrainingSettings | None = None, since_ms: int | None = None,
         categories: ItemCategories | None = None) -> Lists:
    """One pass over ``events`` (all valid events, time-ordered: user_id, item_id, event_time, and
    optionally label and weight; a list carries its positive's weight):
    the rows of a list for each ``is_list_head`` event in ``[since_ms, cutoff_ms)``, the cross
    features of each row, and the similarity tables at ``cutoff_ms`` and at the end. Every event
    still feeds the histories and the similarity; only the lists (the costly part) are limited to
    the window. ``lists``: how lists are made (default ``settings.training``;
    :func:`ranker_list_settings` for the candidate ranker). Each row also carries every optional
    ranker input (``models.cross_features.EXTRA_NAMES``; the category affinity from ``categories``)."""
    mcfg, tcfg, fcfg = settings.model, lists or settings.training, settings.features
    since_ms = -(2 ** 62) if since_ms is None else since_ms
    started = False
    counts = CoOccurrence(mcfg.similarity_pair_with)
    daily = DailySimilarity(counts, mcfg.similarity_top_k, DAY_MS)
    recent: dict[str, deque] = {}
    seen: dict[str, set] = {}
    catalogue: dict[str, int] = {}
    popular = Popular(tcfg.popular_pool)
    items: list[str] = []
    rows: list[tuple] = []
    cross: list[np.ndarray] = []
    at_cutoff: SimilarityTable | None = None
    size = list_size(tcfg)
    users, item_ids, times = events["user_id"].to_numpy(), events["item_id"].to_numpy(), events["event_time"].to_numpy()
    labelled = events["label"].notna().to_numpy() if "label" in events else np.ones(len(events), dtype=bool)
    weights = events["weight"].to_numpy(dtype=np.float64) if "weight" in events else np.ones(len(events))
    for n in tqdm(range(len(events)), desc="training lists", unit="ev", disable=None if progress else True):
        user, item, t = users[n], item_ids[n], int(times[n])
        if at_cutoff is None and t >= cutoff_ms:
            at_cutoff = daily.freeze()
        if not started and t >= since_ms:  # no list reads a table before since_ms
            daily.start(t)
            started = True
        table = daily.table(t) if started else None
        history = recent.setdefault(user, deque(maxlen=fcfg.recent_items))
        mine = seen.setdefault(user, set())
        if is_list_head[n] and since_ms <= t < cutoff_ms:
            newest = list(history)
            chosen, offsets = list_items(tcfg, item, newest, mine, table, items, catalogue, popular.top,
                                         np.random.default_rng((tcfg.seed, n)))
            if len(chosen) == size:
                lid = len(cross)
                w = float(weights[n])
                rows.extend((lid, p, user, c, t, 1.0 if p == 0 else 0.0, o, w) for p, (c, o) in enumerate(zip(chosen, offsets)))
                # the optional inputs ride along in their own columns (the candidate ranker may read them; the DLRM does not)
                cross.append(np.hstack([cross_features(table, newest, chosen), all_extras(table, categories, newest, chosen, t)]))
        history.appendleft(item)
        mine.add(item)
        if labelled[n]:
            if item not in catalogue:
                items.append(item)
            catalogue[item] = catalogue.get(item, 0) + 1
            popular.add(item)
        counts.learn(user, item, t)  # (the table as of this event's day boundary was read above)
    frame = pd.DataFrame(rows, columns=["list", "position", "user_id", "item_id", "event_time", "label", "offset", "weight"])
    values = np.concatenate(cross) if cross else np.zeros((0, len(CROSS_COLUMNS) + len(EXTRA_NAMES)), dtype=np.float32)
    frame = pd.concat([frame, pd.DataFrame(values, columns=[*CROSS_COLUMNS, *EXTRA_NAMES])], axis=1)
    final = daily.freeze()
    return Lists(frame, at_cutoff if at_cutoff is not None else final, final)
