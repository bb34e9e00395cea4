"""Per-user feature state in the stream job: events onto user state, touched users staged once.

An event updates its user's state (features.compute.UserState: stats, recent items, co-visit
memory); what comes back, the previous items it co-visits, is what the item side needs. After a
micro-batch every touched user is staged for Redis and stored in Flink map state once. The Flink
state is passed in (``get/put/items``), so this is tested without Flink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import FeatureSettings
    from streaming.events import Event
    from streaming.job.feature_writer import InProcessWriter, ChildProcessWriter
    from streaming.job.state_cache import LocalStateCache

ItemEvent = tuple[str, str, "float | None", int, list[str]]  # (item, event type, value, event time, previous items)


class UserUpdates:
    kind = "user"

    def __init__(self, cfg: "FeatureSettings", states: Any, cache: "LocalStateCache", writer: "InProcessWriter | ChildProcessWriter") -> None:
        from features import names
        from features.compute import UserState, view_values

        self.cfg, self.states, self.cache, self.writer = cfg, states, cache, writer
        self.new_user = UserState
        self.views = names.views_of("user")  # a user's views all change together
        probe = UserState()
        for view in self.views:
            writer.require(view, view_values(cfg, view, probe))

    def apply(self, key: int, events: "list[Event]") -> list[ItemEvent]:
        """Add on-time ``events`` (offset order) to their users' states; one item event each."""
        cfg, cache, states, new_user = self.cfg, self.cache, self.states, self.new_user
        touched: dict[str, list] = {}  # user -> [state, newest event time]
        item_events: list[ItemEvent] = []
        for e in events:
            t = e.event_time
            user = touched.get(e.user_id)
            if user is None:
                user = touched[e.user_id] = [cache.get(key, e.user_id, states, new_user), t]
            elif t > user[1]:
                user[1] = t
            event_type = e.event_type.value
            previous = user[0].add(cfg, e.event_id, e.item_id, event_type, e.value, t)
            item_events.append((e.item_id, event_type, e.value, t, previous))
        for user_id, (state, last_t) in touched.items():
            encoded = state.to_bytes()
            self.writer.stage("user", self.views, user_id, state, encoded, last_t)
            states.put(user_id, encoded)
        return item_events

    def rewrite_restored(self, key: int) -> int:
        """Stage every user of ``key`` from its restored state (see the function's ``_check_key``)."""
        n = 0
        for user_id, stored in self.states.items():
            state = self.cache.adopt(key, user_id, stored)
            self.writer.stage("user", self.views, user_id, state, None, state.stats.last_seen_ms)
            n += 1
        return n


__all__ = ["ItemEvent", "UserUpdates"]
