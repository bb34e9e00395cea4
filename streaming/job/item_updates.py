"""Per-item feature state in the stream job: routing item updates by shard, and applying them.

With one stage (``fused``, the local default) whole events go straight onto item state; with two
(parallelism above one, the cluster layout) each event becomes item updates (features.compute's
``item_updates``) routed to the shard that owns the item (``models.ids.bucket``: stable across
processes, so restored state keeps its shard). Touched items are staged for Redis and stored in
Flink map state once per micro-batch. The Flink state is passed in, so this is tested without Flink.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Iterable

from models.ids import bucket

if TYPE_CHECKING:
    from features.compute import ItemUpdate
    from infra.settings import FeatureSettings
    from streaming.job.feature_writer import ChildProcessWriter, InProcessWriter
    from streaming.job.state_cache import LocalStateCache
    from streaming.job.user_updates import ItemEvent


def route(item_events: "Iterable[ItemEvent]", shards: int) -> "dict[int, list[ItemUpdate]]":
    """Item updates grouped by the shard that owns each item.

    >>> routed = route([("i1", "click", None, 5, ["i0"])], shards=4)
    >>> sorted(u[0] for updates in routed.values() for u in updates)
    ['i0', 'i1']
    """
    from features.compute import item_updates

    routed: dict[int, list] = defaultdict(list)
    for item_id, event_type, value, t, previous in item_events:
        for update in item_updates(item_id, event_type, value, t, previous):
            routed[bucket(update[0], shards)].append(update)
    return routed


class ItemUpdates:
    kind = "item"

    def __init__(self, cfg: "FeatureSettings", states: Any, cache: "LocalStateCache",
                 writer: "InProcessWriter | ChildProcessWriter") -> None:
        from features import names
        from features.compute import ItemState, view_values

        self.cfg, self.states, self.cache, self.writer = cfg, states, cache, writer
        self.new_item = ItemState
        self.views = {  # (had an event, had co-visits) -> the views that changed
            (True, False): (names.ITEM_STATS, names.ITEM_POPULARITY), (False, True): (names.ITEM_COVISIT,),
            (True, True): (names.ITEM_STATS, names.ITEM_POPULARITY, names.ITEM_COVISIT), (False, False): (),
        }
        probe = ItemState(len(cfg.windows))
        for view in names.views_of("item"):
            writer.require(view, view_values(cfg, view, probe))

    def apply_updates(self, key: int, updates: "Iterable[ItemUpdate]") -> int:
        """Routed item updates (the item stage of the two-stage graph); returns how many."""
        from features.compute import item_step

        cfg = self.cfg
        touched: dict[str, list] = {}  # item -> [state, max event time, had an event, had co-visits]
        get = self._getter(key, touched)
        n = 0
        for update in updates:
            n += 1
            item_id, event_type, _, event_time, covisits = update
            item_step(cfg, get(item_id), update)
            entry = touched[item_id]
            if event_time > entry[1]:
                entry[1] = event_time
            entry[2] = entry[2] or bool(event_type)
            entry[3] = entry[3] or bool(covisits)
        self._stage(touched)
        return n

    def apply_events(self, key: int, events: "list[ItemEvent]") -> int:
        """Whole events straight onto item state (the fused stage): no update tuples at all."""
        from features.compute import apply_to_items

        cfg = self.cfg
        touched: dict[str, list] = {}
        get = self._getter(key, touched)
        for item_id, event_type, value, event_time, previous in events:
            apply_to_items(cfg, get, item_id, event_type, value, event_time, previous)
            entry = touched[item_id]
            entry[1] = max(entry[1], event_time)
            entry[2] = True
            if previous:
                entry[3] = True
                for other in previous:
                    other_entry = touched[other]
                    other_entry[1] = max(other_entry[1], event_time)
                    other_entry[3] = True
        self._stage(touched)
        return len(events)

    def rewrite_restored(self, key: int) -> int:
        """Stage every item of ``key`` from its restored state (see the function's ``_check_key``)."""
        n = 0
        for item_id, stored in self.states.items():
            state = self.cache.adopt(key, item_id, stored)
            views = self.views[sum(state.stats.counts) > 0, bool(state.covisit)]
            self.writer.stage("item", views, item_id, state, None, max(state.stats.last_seen_ms, state.latest_ms))
            n += 1
        return n

    def _getter(self, key: int, touched: dict[str, list]) -> Callable[[str], Any]:
        n_windows = len(self.cfg.windows)
        new_item = lambda: self.new_item(n_windows)  # noqa: E731
        cache, states = self.cache, self.states

        def get(item_id: str) -> Any:
            entry = touched.get(item_id)
            if entry is None:
                entry = touched[item_id] = [cache.get(key, item_id, states, new_item), -1, False, False]
            return entry[0]

        return get

    def _stage(self, touched: dict[str, list]) -> None:
        """Stage each touched item's changed views once, and write the states back to Flink."""
        writer, views = self.writer, self.views
        for item_id, (state, event_time, had_event, had_covisit) in touched.items():
            writer.stage("item", views[had_event, had_covisit], item_id, state, None, event_time)
            self.states.put(item_id, state.to_bytes())


__all__ = ["ItemUpdates", "route"]
