"""Model inputs from in-process feature state: what the point-in-time join returns, without a join.

The streaming trainer sees events one by one. Before it folds an event into the feature state
(``features.compute``, the code the stream job and the backfill run) it reads the user's and the
item's values from that state: exactly the values as of "just before this event", which is what
the nightly job's point-in-time join gives each training row. Values of an entity the state has
not seen are missing (NaN -> 0 after :func:`~features.model_inputs.dense_transform`), as in the join.

>>> from infra.settings import FeatureSettings
>>> from features.model_inputs import FeatureSpec
>>> spec = FeatureSpec(("user_stats:n_events",), ("item_stats:n_events",), "user_recent:recent_items", "d")
>>> live = LiveFeatures(FeatureSettings(), spec)
>>> live.rows("u1", ["a"])[0].tolist()
[[0.0, 0.0]]
>>> live.add("e1", "u1", "a", "click", None, 1000)
>>> dense, recent = live.rows("u1", ["a", "b"])
>>> dense.astype(float).round(3).tolist(), recent
([[0.693, 0.693], [0.693, 0.0]], ['a'])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from features import names
from features.compute import InMemoryFeatures, ItemState, UserState, view_values
from features.model_inputs import FeatureSpec, dense_transform
from infra.settings import FeatureSettings


def _split(refs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``view:feature`` refs grouped by view, in first-appearance order (the spec's column order)."""
    groups: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = ref.split(":", 1)
        groups.setdefault(view, []).append(feature)
    return list(groups.items())


class LiveFeatures:
    """Users' and items' feature state, folded event by event, read in the model's input layout."""

    def __init__(self, cfg: FeatureSettings, spec: FeatureSpec, fold: InMemoryFeatures | None = None) -> None:
        self.cfg = cfg
        self.spec = spec
        self.fold = fold or InMemoryFeatures(cfg)
        self._user_views = _split(spec.user_refs)
        self._item_views = _split(spec.item_refs)
        self._recent_feature = spec.recent_ref.split(":", 1)[1]
        self._item_cache: dict[str, np.ndarray] = {}  # raw item values; an event drops the items it touched
        self.item_writes: dict[str, int] = {}  # per item: how many events changed it (the stores' write stamp)

    def add(self, event_id: str, user_id: str, item_id: str, event_type: str, value: float | None, event_time: int) -> None:
        _, touched = self.fold.add(event_id, user_id, item_id, event_type, value, event_time)
        for item in touched:
            self._item_cache.pop(item, None)
            self.item_writes[item] = self.item_writes.get(item, 0) + 1

    def reader(self, refs: Sequence[str], join_key: str) -> "LiveReader":
        """A reader of ``view:feature`` refs with the online store's interface, over this state."""
        return LiveReader(self, refs, join_key)

    def _values(self, views: list[tuple[str, list[str]]], state: UserState | ItemState | None, present: bool) -> list[Any]:
        out: list[Any] = []
        for view, features in views:
            if state is None or not present:
                out.extend([np.nan] * len(features))
                continue
            values = view_values(self.cfg, view, state)
            out.extend(np.nan if values.get(f) is None else values[f] for f in features)
        return out

    def user(self, user_id: str) -> tuple[list[Any], list[str]]:
        """Raw user values (spec order) and the recent items, newest first."""
        state = self.fold.users.get(user_id)
        recent = view_values(self.cfg, names.USER_RECENT, state)[self._recent_feature] if state else []
        return self._values(self._user_views, state, True), list(recent)

    def item(self, item_id: str) -> np.ndarray:
        values = self._item_cache.get(item_id)
        if values is None:
            state = self.fold.items.get(item_id)
            # an item known only from co-visits has no stats/popularity row yet (the backfill writes none)
            present = state is not None and state.latest_ms >= 0
            values = self._item_cache[item_id] = np.array(self._values(self._item_views, state, present), dtype=np.float64)
        return values

    def rows(self, user_id: str, items: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Dense inputs (len(items), n_dense), transformed as in training, and the user's recent items."""
        user, recent = self.user(user_id)
        raw = np.empty((len(items), self.spec.n_dense), dtype=np.float64)
        raw[:, :len(user)] = np.array(user, dtype=np.float64)
        if items:
            raw[:, len(user):] = np.stack([self.item(i) for i in items]).reshape(len(items), -1)
        return dense_transform(raw).astype(np.float32), recent


class LiveReader:
    """What ``serving.online_features.OnlineFeatureReader`` reads from Redis, read from the state
    the stream job would have written there: the serving code runs unchanged on a replay
    (``batch.evaluate.prequential``'s ``served`` strategy)."""

    def __init__(self, live: LiveFeatures, refs: Sequence[str], join_key: str) -> None:
        if join_key not in (names.USER_KEY, names.ITEM_KEY):
            raise ValueError(f"no {join_key} entities in the live features")
        self.live = live
        self.refs = list(refs)
        self._views = [view for view, _ in _split(refs)]
        self._pairs = [ref.split(":", 1) for ref in self.refs]
        self._states = live.fold.users if join_key == names.USER_KEY else live.fold.items

    def read(self, entity_ids: Sequence[str], decode: Any = None) -> list[list[Any]]:
        """Values in ``refs`` order per entity; None where nothing would have been written."""
        out = []
        for entity in entity_ids:
            state = self._states.get(entity)
            values: dict[str, dict[str, Any]] = {}
            for view in self._views:
                # an item known only from co-visits has no stats/popularity row yet (as in `item` above)
                written = state is not None and (view == names.ITEM_COVISIT or getattr(state, "latest_ms", 0) >= 0)
                values[view] = view_values(self.live.cfg, view, state) if written else {}
            out.append([values[view].get(feature) for view, feature in self._pairs])
        return out

    def read_timestamps(self, entity_ids: Sequence[str]) -> list[tuple[int, ...]]:
        """A stamp per entity that changes whenever an event changed it."""
        return [(self.live.item_writes.get(e, 0),) for e in entity_ids]
