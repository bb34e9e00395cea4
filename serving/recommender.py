"""Candidates from several sources, filtered, ranked by the served model, top K.

Sources (each item remembers every source that proposed it):

- ``similar``: the user's item-kNN list over the version's item similarity table
  (``models.similarity``: items that co-occur in histories with the user's newest items);
- ``covisit``: items co-visited with the user's newest items (``item_covisit``, written by the
  stream job), weighted towards the newest;
- ``embedding``: catalogue items nearest to the user's recent items in the model's item table;
- ``trending``: the catalogue's most active items right now (``serving.item_snapshot``);
- ``popular``: the most trained-on items of the model's catalogue (the non-personalised prior;
  also what fills up a list that is still short).

A user with no history (cold) gets trending and popular candidates, ranked the same way.
Items in the user's recent history are dropped when ``filter_seen`` is on, and items the caller
passes in ``exclude`` always (the online features know a user's last ``features.recent_items``
events; a caller that knows more, such as past purchases, can exclude them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from features import names
from features.model_inputs import dense_transform
from infra.settings import ServingSettings, Settings
from serving.item_snapshot import ItemSnapshot
from serving.online_features import OnlineFeatureReader, numeric
from serving.served_model import ServedModel

COVISIT_REFS = (f"{names.ITEM_COVISIT}:covisit_items", f"{names.ITEM_COVISIT}:covisit_counts")


@dataclass
class ScoredItem:
    item_id: str
    score: float
    sources: list[str]


@dataclass
class Recommendation:
    user_id: str
    model_version: str
    items: list[ScoredItem]
    cold_start: bool
    recent_items: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)


def event_clock(snapshot: ItemSnapshot | None) -> int | None:
    """The time candidates' ages are measured at: the stream's event-time clock (the newest
    update the item snapshot saw), so a replayed log and a live one read alike and training
    (which measures at each event's time) matches; wall clock when there is no snapshot yet."""
    return snapshot.event_time_ms if snapshot is not None and snapshot.event_time_ms > 0 else None


def _with_trending_slots(order: np.ndarray, k: int, items: list[str], trending: list[str], slots: int) -> list[int]:
    """The ranked top ``k`` (indices into ``items``), where the ``slots`` most active trending
    candidates are always present: any the ranking left out take the last places. A burst of
    activity (often a new item, whose feature values the model has never seen at that scale)
    reaches users before the model has caught up with it.

    >>> _with_trending_slots(np.array([0, 1, 2, 3]), 2, ["a", "b", "c", "d"], ["d", "a"], 1)
    [0, 3]
    >>> _with_trending_slots(np.array([0, 1, 2, 3]), 2, ["a", "b", "c", "d"], ["a", "d"], 1)
    [0, 1]
    """
    top = [int(i) for i in order[:k]]
    if slots <= 0 or k <= slots:
        return top
    position = {item: i for i, item in enumerate(items)}
    wanted = list(islice((position[t] for t in trending if t in position), slots))
    missing = [i for i in wanted if i not in set(top)]
    return top[:k - len(missing)] + missing if missing else top


class FeatureReader(Protocol):
    def read(self, entity_ids: Sequence[str]) -> list[list[Any]]: ...


class Recommender:
    """``readers(refs, join_key)`` makes the feature readers: the online store's by default, or
    a replay's in-process state (``features.live.LiveFeatures.reader``), so a replay scores this
    exact code."""

    def __init__(self, settings: Settings, readers: Callable[[tuple[str, ...], str], FeatureReader] | None = None) -> None:
        self.settings = settings
        self.cfg: ServingSettings = settings.serving
        self._make_reader = readers or (lambda refs, key: OnlineFeatureReader(settings, refs, key))
        self._user_readers: dict[tuple[str, ...], FeatureReader] = {}
        self._item_readers: dict[tuple[str, ...], FeatureReader] = {}

    def _reader(self, cache: dict, refs: tuple[str, ...], key: str) -> FeatureReader:
        reader = cache.get(refs)
        if reader is None:
            reader = cache[refs] = self._make_reader(refs, key)
        return reader

    def recommend(self, model: ServedModel, snapshot: ItemSnapshot | None, user_id: str, k: int,
                  filter_seen: bool | None = None, exclude: frozenset[str] = frozenset()) -> Recommendation:
        """Top ``k`` for one user; ``exclude`` items are never returned (e.g. what the caller knows the
        user bought), in addition to the recent history when ``filter_seen``."""
        cfg = self.cfg
        filter_seen = cfg.filter_seen if filter_seen is None else filter_seen
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        spec = model.spec
        user_refs = (*spec.user_refs, spec.recent_ref)
        row = self._reader(self._user_readers, user_refs, names.USER_KEY).read([user_id])[0]
        user_dense = dense_transform(numeric([row[:-1]])[0]).astype(np.float32)
        recent = [str(i) for i in (row[-1] or [])]
        t1 = time.perf_counter()
        timings["user_features"] = (t1 - t0) * 1000

        sources: dict[str, list[str]] = {}

        def propose(items: list[str], source: str, limit: int) -> int:
            n = 0
            for item in items:
                if n >= limit:
                    break
                if item in seen:
                    continue
                sources.setdefault(item, []).append(source)
                n += 1
            return n

        seen = (set(recent) if filter_seen else set()) | set(exclude)
        counts = {}
        if recent and cfg.similar_candidates:
            counts["similar"] = propose(model.similar(recent, cfg.similar_candidates, seen), "similar", cfg.similar_candidates)
        if recent and cfg.covisit_candidates:
            counts["covisit"] = propose(self._covisited(recent), "covisit", cfg.covisit_candidates)
        if recent and cfg.embedding_candidates:
            nearest = model.nearest(recent[: cfg.covisit_from_recent * 2], cfg.embedding_candidates + len(seen))
            counts["embedding"] = propose([i for i, _ in nearest], "embedding", cfg.embedding_candidates)
        if snapshot is not None and cfg.trending_candidates:
            counts["trending"] = propose(snapshot.trending, "trending", cfg.trending_candidates)
        want_popular = max(cfg.popular_candidates, k - len(sources))
        if want_popular:
            counts["popular"] = propose(model.catalogue[: want_popular + len(seen)].tolist(), "popular", want_popular)
        t2 = time.perf_counter()
        timings["candidates"] = (t2 - t1) * 1000

        items = list(sources)
        item_dense = self._item_dense(model, snapshot, items)
        t3 = time.perf_counter()
        timings["item_features"] = (t3 - t2) * 1000
        scores = model.score(user_id, recent, user_dense, items, item_dense, event_clock(snapshot))
        trending = snapshot.trending if snapshot is not None and cfg.trending_candidates else []
        top = _with_trending_slots(np.argsort(-scores, kind="stable"), k, items, trending, cfg.trending_slots)
        timings["ranking"] = (time.perf_counter() - t3) * 1000
        ranked = [ScoredItem(items[i], float(scores[i]), sources[items[i]]) for i in top]
        return Recommendation(user_id, model.version, ranked, not recent, recent, timings, counts)

    def _covisited(self, recent: list[str]) -> list[str]:
        newest = recent[: self.cfg.covisit_from_recent]
        rows = self._reader(self._item_readers, COVISIT_REFS, names.ITEM_KEY).read(newest)
        score: dict[str, float] = {}
        for position, (items, counts) in enumerate(rows):
            weight = 1.0 / (1 + position)
            for item, c in zip(items or [], counts or []):
                score[item] = score.get(item, 0.0) + weight * c
        return sorted(score, key=lambda i: (-score[i], i))

    def _item_dense(self, model: ServedModel, snapshot: ItemSnapshot | None, items: list[str]) -> np.ndarray:
        """Catalogue items from the snapshot; anything else (new items, no snapshot yet) read now."""
        refs = tuple(model.spec.item_refs)
        if snapshot is not None and snapshot.version == model.version:
            dense, missing = snapshot.dense_for(items)
        else:
            dense, missing = np.zeros((len(items), len(refs)), dtype=np.float32), list(range(len(items)))
        if missing:
            rows = self._reader(self._item_readers, refs, names.ITEM_KEY).read([items[p] for p in missing])
            fresh = dense_transform(numeric(rows).reshape(len(missing), len(refs)))
            dense = dense.copy()
            dense[missing] = fresh
        return dense
