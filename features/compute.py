"""How every streaming feature is computed from events: one implementation for stream and batch.

The Flink job (streaming.job.feature_job) keeps one :class:`UserState` per user and one
:class:`ItemState` per item in Flink keyed state; the backfill (batch.backfill) folds the Delta
``events`` table through the same classes in the same per-partition order. Each state returns
its features as ``{feature name: value}`` with the names of features.names.

Definitions (all in event time; a *late* event counts in no feature, see the job):

* stats: counts per event type, rating count/average, last event time.
* recent: the user's last N events ordered by (event_time, event_id), newest first.
* popularity: for each window (size W, slide S), with ``t`` the item's latest event time,
  the window is ``[end - W, end)`` where ``end = (t // S + 1) * S``; counts per type in it.
  ``trending = (short + 1) / (long * W_short / W_long + 1)`` for the shortest and longest window.
* co-visitation: a user's event pairs with that user's previous ``covisit_max_recent`` events
  (arrival order) that are within ``covisit_window_s`` of it and on another item; each pair
  adds 1 in both directions; the top ``covisit_top_k`` by (count desc, item id) are served.

>>> from infra.settings import FeatureSettings
>>> cfg = FeatureSettings(recent_items=2)
>>> u = UserState()
>>> for i, t in [("a", 1000), ("b", 2000), ("c", 3000)]:
...     _ = u.add(cfg, "e" + i, i, "click", None, t)
>>> u.recent_features()["recent_items"]
['c', 'b']
>>> u.stats.features()["n_click"]
3
"""

from __future__ import annotations

import bisect
import pickle
from collections import deque
from typing import Any, Callable

import orjson

from features import names
from features.names import EVENT_TYPES
from infra.settings import FeatureSettings

TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}
RATING = TYPE_INDEX["rating"]


class Stats:
    """Counts per event type, rating sum/count, last seen (order-independent)."""

    __slots__ = ("counts", "rating_sum", "rating_count", "last_seen_ms")

    def __init__(self) -> None:
        self.counts = [0] * len(EVENT_TYPES)
        self.rating_sum = 0.0
        self.rating_count = 0
        self.last_seen_ms = 0

    def add(self, type_idx: int, value: float | None, event_time: int) -> None:
        self.counts[type_idx] += 1
        if type_idx == RATING and value is not None:
            self.rating_sum += value
            self.rating_count += 1
        if event_time > self.last_seen_ms:
            self.last_seen_ms = event_time

    def features(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_events": sum(self.counts)}
        for t, n in zip(EVENT_TYPES, self.counts):
            out[f"n_{t}"] = n
        out["rating_count"] = self.rating_count
        out["avg_rating"] = self.rating_sum / self.rating_count if self.rating_count else None
        out["last_seen_ms"] = self.last_seen_ms
        return out

    def __getstate__(self) -> tuple:
        return (self.counts, self.rating_sum, self.rating_count, self.last_seen_ms)

    def to_list(self) -> list:
        return [self.counts, self.rating_sum, self.rating_count, self.last_seen_ms]

    @classmethod
    def from_list(cls, raw: list) -> "Stats":
        stats = cls.__new__(cls)
        stats.counts, stats.rating_sum, stats.rating_count, stats.last_seen_ms = raw
        return stats

    def __setstate__(self, state: tuple) -> None:
        self.counts, self.rating_sum, self.rating_count, self.last_seen_ms = state


class _StoredState:
    """A state kept in Flink as bytes: ``to_bytes`` writes it, ``from_bytes`` reads it back (or a
    pickle of it, as Flink state held it before ``to_bytes``)."""

    __slots__ = ()

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        raw = _state_fields(data, cls)
        return raw if isinstance(raw, cls) else cls._from_fields(raw)


class UserState(_StoredState):
    """Everything kept per user: stats, the recent events, the co-visitation memory."""

    __slots__ = ("stats", "recent", "covisit_memory")

    def __init__(self) -> None:
        self.stats = Stats()
        self.recent: list[tuple[int, str, str, str]] = []  # (event_time, event_id, item, type), ascending
        self.covisit_memory: deque[tuple[str, int]] = deque()  # (item, event_time), arrival order

    def add(self, cfg: FeatureSettings, event_id: str, item_id: str, event_type: str, value: float | None, event_time: int) -> list[str]:
        """Apply one event; returns the previous items it co-visits (distinct, arrival order)."""
        self.stats.add(TYPE_INDEX[event_type], value, event_time)
        entry = (event_time, event_id, item_id, event_type)
        if len(self.recent) < cfg.recent_items or entry > self.recent[0]:
            bisect.insort(self.recent, entry)
            if len(self.recent) > cfg.recent_items:
                del self.recent[0]
        window = cfg.covisit_window_s * 1000
        previous: list[str] = []
        for prev_item, prev_time in self.covisit_memory:
            if prev_item != item_id and abs(event_time - prev_time) <= window and prev_item not in previous:
                previous.append(prev_item)
        self.covisit_memory.append((item_id, event_time))
        while len(self.covisit_memory) > cfg.covisit_max_recent:
            self.covisit_memory.popleft()
        return previous

    def recent_features(self) -> dict[str, Any]:
        newest_first = self.recent[::-1]
        return {
            "recent_items": [e[2] for e in newest_first],
            "recent_types": [e[3] for e in newest_first],
            "recent_times_ms": [e[0] for e in newest_first],
        }

    def __getstate__(self) -> tuple:
        return (self.stats, self.recent, list(self.covisit_memory))

    def __setstate__(self, state: tuple) -> None:
        self.stats, self.recent, memory = state
        self.covisit_memory = deque(memory)

    def to_bytes(self) -> bytes:
        """Compact encoding for Flink state (about 2x cheaper than pickle, and written every batch)."""
        return orjson.dumps([STATE_FORMAT, self.stats.to_list(), self.recent, list(self.covisit_memory)])

    @classmethod
    def _from_fields(cls, raw: list) -> "UserState":
        user = cls.__new__(cls)
        user.stats = Stats.from_list(raw[1])
        user.recent = [tuple(e) for e in raw[2]]
        user.covisit_memory = deque(tuple(m) for m in raw[3])
        return user


class ItemState(_StoredState):
    """Everything kept per item: stats, windowed popularity buckets, co-visitation counts."""

    __slots__ = ("stats", "buckets", "latest_ms", "covisit", "covisit_top", "covisit_dirty", "covisit_floor",
                 "_covisit_json", "_covisit_log", "_buckets_json", "_top_json")

    def __init__(self, n_windows: int) -> None:
        self.stats = Stats()
        # per window: {slot index: counts per type}; only slots inside the current window
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(n_windows)]
        self.latest_ms = -1
        self.covisit: dict[str, int] = {}
        # counts only grow, so the new top K is within (previous top K + items counted since);
        # and an item whose count is still below the K-th count of the last top K (the floor)
        # cannot be in it: only counts reaching the floor are remembered as candidates
        self.covisit_top: list[str] = []
        self.covisit_dirty: set[str] = set()
        self.covisit_floor = 0
        self._forget_encoding()

    def _forget_encoding(self) -> None:
        # the counts are re-encoded for Flink state every micro-batch that touches the item; for a
        # popular item that is thousands of entries for a few increments. So the JSON of the
        # counts is kept from the last full encoding (``_covisit_json``), with the items counted
        # since (``_covisit_log``), and re-made only once the log is long (see to_bytes)
        self._covisit_json: bytes | None = None
        self._covisit_log: list[str] = []
        # most touches only add co-visits: the JSON of the buckets is kept until the item's next
        # own event, that of the top K until its next refresh
        self._buckets_json: bytes | None = None
        self._top_json: bytes | None = None

    def add_event(self, cfg: FeatureSettings, event_type: str, value: float | None, event_time: int) -> None:
        type_idx = TYPE_INDEX[event_type]
        self.stats.add(type_idx, value, event_time)
        self._buckets_json = None
        if event_time > self.latest_ms:
            self.latest_ms = event_time
        for w, buckets in zip(cfg.windows, self.buckets):
            slide = w.slide_s * 1000
            slot = event_time // slide
            first_live = self.latest_ms // slide + 1 - w.size_s // w.slide_s
            if slot < first_live:
                continue  # older than the item's current window: counts in no window value
            counts = buckets.get(slot)
            if counts is None:  # a new slot: the only time the window can have moved on
                counts = buckets[slot] = [0] * len(EVENT_TYPES)
                for old in [s for s in buckets if s < first_live]:
                    del buckets[old]
            counts[type_idx] += 1

    def add_covisits(self, items: list[str]) -> None:
        covisit, floor, dirty = self.covisit, self.covisit_floor, self.covisit_dirty
        for other in items:
            n = covisit[other] = covisit.get(other, 0) + 1
            if n >= floor:
                dirty.add(other)
        if self._covisit_json is not None:
            self._covisit_log.extend(items)

    def popularity_features(self, cfg: FeatureSettings) -> dict[str, Any]:
        out: dict[str, Any] = {}
        totals: dict[str, tuple[int, int]] = {}
        for w, buckets in zip(cfg.windows, self.buckets):
            slide = w.slide_s * 1000
            first_live = self.latest_ms // slide + 1 - w.size_s // w.slide_s
            per_type = [0] * len(EVENT_TYPES)
            for slot, counts in buckets.items():
                if slot >= first_live:
                    for i, n in enumerate(counts):
                        per_type[i] += n
            total = sum(per_type)
            totals[w.name] = (total, w.size_s)
            out[f"pop_{w.name}"] = total
            for t, n in zip(EVENT_TYPES, per_type):
                out[f"pop_{w.name}_{t}"] = n
        by_size = sorted(totals.values(), key=lambda x: x[1])
        (short, short_s), (long, long_s) = by_size[0], by_size[-1]
        out["trending"] = (short + 1) / (long * short_s / long_s + 1)
        out["pop_as_of_ms"] = self.latest_ms
        return out

    def refresh_covisit_top(self, cfg: FeatureSettings) -> None:
        """Bring the top K up to date with the candidates counted since the last refresh."""
        if not self.covisit_dirty:
            return
        covisit, top, dirty = self.covisit, self.covisit_top, self.covisit_dirty

        def rank(k: str) -> tuple[int, str]:
            return -covisit[k], k

        if len(dirty) * 4 > len(top):  # many changed: one sort (by id, then stably by count: the
            # same order as ``rank`` without a Python call per item; reverse keeps sort stability)
            top = sorted(sorted(dirty.union(top)), key=covisit.__getitem__, reverse=True)
        else:  # a few changed: the others keep their order (their counts did not move)
            top = [k for k in top if k not in dirty]
            for k in dirty:
                bisect.insort(top, k, key=rank)
        k = cfg.covisit_top_k
        self.covisit_top = top[:k]
        self._top_json = None
        self.covisit_floor = covisit[top[k - 1]] if len(top) >= k else 0
        self.covisit_dirty = set()

    def covisit_features(self, cfg: FeatureSettings) -> dict[str, Any]:
        self.refresh_covisit_top(cfg)
        return {"covisit_items": list(self.covisit_top), "covisit_counts": [self.covisit[k] for k in self.covisit_top]}

    def __getstate__(self) -> tuple:
        return (self.stats, self.buckets, self.latest_ms, self.covisit, self.covisit_top, self.covisit_dirty,
                self.covisit_floor)

    def __setstate__(self, state: tuple) -> None:
        self.stats, self.buckets, self.latest_ms, self.covisit, self.covisit_top, self.covisit_dirty = state[:6]
        self.covisit_floor = state[6] if len(state) > 6 else 0  # pickled before the floor: 0 is always safe
        self._forget_encoding()

    def to_bytes(self) -> bytes:
        """Compact encoding for Flink state (see :meth:`UserState.to_bytes`): the counts as of the
        last full encoding, then the items counted since (replayed by ``from_bytes``).

        >>> item = ItemState(1)
        >>> item.add_covisits(["a", "b"])
        >>> first = item.to_bytes()
        >>> item.add_covisits(["b"])
        >>> ItemState.from_bytes(item.to_bytes()).covisit
        {'a': 1, 'b': 2}
        """
        if self._covisit_json is None or len(self._covisit_log) > 16 + len(self.covisit) // 4:
            self._covisit_json, self._covisit_log = orjson.dumps(self.covisit), []
        return self._encode(orjson.Fragment(self._covisit_json), list(self.covisit_dirty), self._covisit_log)

    def online_bytes(self, cfg: FeatureSettings) -> bytes:
        """The state with only the co-visits of the top K: all the online views read, and what the
        job hands its feature writer process (the full counts can be thousands of items).

        >>> item = ItemState(1)
        >>> item.add_covisits(["a", "b", "b"])
        >>> ItemState.from_bytes(item.online_bytes(FeatureSettings(covisit_top_k=1))).covisit
        {'b': 2}
        """
        self.refresh_covisit_top(cfg)
        return self._encode({k: self.covisit[k] for k in self.covisit_top}, [], [])

    def _encode(self, covisit: Any, dirty: list[str], counted_since: list[str]) -> bytes:
        if self._buckets_json is None:
            self._buckets_json = orjson.dumps([[[slot, counts] for slot, counts in b.items()] for b in self.buckets])
        if self._top_json is None:
            self._top_json = orjson.dumps(self.covisit_top)
        return orjson.dumps([STATE_FORMAT, self.stats.to_list(), orjson.Fragment(self._buckets_json), self.latest_ms,
                             covisit, orjson.Fragment(self._top_json), dirty, self.covisit_floor, counted_since])

    @classmethod
    def _from_fields(cls, raw: list) -> "ItemState":
        item = cls.__new__(cls)
        item.stats = Stats.from_list(raw[1])
        item.buckets = [{slot: counts for slot, counts in b} for b in raw[2]]
        item.latest_ms, item.covisit, item.covisit_top = raw[3], raw[4], raw[5]
        item.covisit_dirty = set(raw[6])
        item.covisit_floor = raw[7] if len(raw) > 7 else 0  # written before the floor: 0 is always safe
        covisit = item.covisit
        for other in raw[8] if len(raw) > 8 else ():
            covisit[other] = covisit.get(other, 0) + 1
        item._forget_encoding()
        return item


STATE_FORMAT = 1  # first element of an encoded state; bump it when the layout changes


def _state_fields(data: bytes, cls: type) -> Any:
    """An encoded state's fields, or the object itself from a pickle (Flink state written before
    states were encoded by ``to_bytes``: restoring such a checkpoint keeps working).

    >>> u = UserState()
    >>> _ = u.add(FeatureSettings(), "e1", "a", "rating", 4.0, 1000)
    >>> UserState.from_bytes(u.to_bytes()).recent == UserState.from_bytes(pickle.dumps(u)).recent == u.recent
    True
    """
    if data[:1] == b"\x80":  # pickle protocol >= 2
        state = pickle.loads(data)
        if not isinstance(state, cls):
            raise TypeError(f"Flink state holds a {type(state).__name__}, expected {cls.__name__}")
        return state
    raw = orjson.loads(data)
    if raw[0] != STATE_FORMAT:
        raise ValueError(f"{cls.__name__} state format {raw[0]} is not {STATE_FORMAT}: restore with the version that wrote it")
    return raw


# -- the per-event steps, shared by the Flink job and the backfill ------------------------------
# An item update is (item_id, event_type or "", value, event_time, co-visited items): the event
# itself for its own item (with the items it co-visits), or a co-visit-only update ("") for each
# of those items, so that both directions of a pair are counted.
ItemUpdate = tuple[str, str, "float | None", int, list[str]]


def item_updates(item_id: str, event_type: str, value: float | None, event_time: int, previous: list[str]) -> list[ItemUpdate]:
    """An event's effect on item state as routable updates (when items live on other workers)."""
    updates: list[ItemUpdate] = [(item_id, event_type, value, event_time, previous)]
    updates.extend((other, "", None, event_time, [item_id]) for other in previous)
    return updates


def item_step(cfg: FeatureSettings, state: ItemState, update: ItemUpdate) -> None:
    _, event_type, value, event_time, covisits = update
    if event_type:
        state.add_event(cfg, event_type, value, event_time)
    if covisits:
        state.add_covisits(covisits)


def apply_to_items(cfg: FeatureSettings, get_item: "Callable[[str], ItemState]", item_id: str, event_type: str,
                   value: float | None, event_time: int, previous: list[str]) -> None:
    """The same effect as ``item_step`` over ``item_updates(...)``, without building the updates
    (used where all items are at hand: the fused job stage and :class:`InMemoryFeatures`)."""
    own = get_item(item_id)
    own.add_event(cfg, event_type, value, event_time)
    if previous:
        own.add_covisits(previous)
        single = (item_id,)
        for other in previous:
            get_item(other).add_covisits(single)


_VIEW_VALUES: dict[str, Callable[[Any, FeatureSettings], dict[str, Any]]] = {
    names.USER_STATS: lambda s, cfg: s.stats.features(),
    names.USER_RECENT: lambda s, cfg: s.recent_features(),
    names.ITEM_STATS: lambda s, cfg: s.stats.features(),
    names.ITEM_POPULARITY: lambda s, cfg: s.popularity_features(cfg),
    names.ITEM_COVISIT: lambda s, cfg: s.covisit_features(cfg),
}


if set(_VIEW_VALUES) != {v.name for v in names.VIEWS}:  # the computation covers exactly the declared views
    raise RuntimeError(f"features.compute computes {sorted(_VIEW_VALUES)}, features.names declares "
                       f"{sorted(v.name for v in names.VIEWS)}")


def view_values(cfg: FeatureSettings, view: str, state: "UserState | ItemState") -> dict[str, Any]:
    """One feature view's values from its entity's state: a ``user_*`` view reads a
    :class:`UserState`, an ``item_*`` view an :class:`ItemState` (what the job writes for it)."""
    return _VIEW_VALUES[view](state, cfg)


class InMemoryFeatures:
    """Every user and item state in plain dicts of one process: how the batch backfill (and the
    single-process benchmark baseline) fold events, with the steps of the job's fused stage.

    >>> from infra.settings import FeatureSettings
    >>> fold = InMemoryFeatures(FeatureSettings())
    >>> _, touched = fold.add("e1", "u1", "a", "view", None, 1000)
    >>> _, touched = fold.add("e2", "u1", "b", "view", None, 2000)
    >>> touched, fold.items["a"].covisit
    (['b', 'a'], {'b': 1})
    """

    def __init__(self, cfg: FeatureSettings) -> None:
        self.cfg = cfg
        self.users: dict[str, UserState] = {}
        self.items: dict[str, ItemState] = {}
        self._n_windows = len(cfg.windows)

    def item(self, item_id: str) -> ItemState:
        state = self.items.get(item_id)
        if state is None:
            state = self.items[item_id] = ItemState(self._n_windows)
        return state

    def add(self, event_id: str, user_id: str, item_id: str, event_type: str, value: float | None,
            event_time: int) -> tuple[UserState, list[str]]:
        """Apply one event; returns its user's state and the items it changed (own item first)."""
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = UserState()
        previous = user.add(self.cfg, event_id, item_id, event_type, value, event_time)
        apply_to_items(self.cfg, self.item, item_id, event_type, value, event_time, previous)
        return user, [item_id, *previous]
