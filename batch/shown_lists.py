"""What each user was shown and did not engage with, kept as a stream goes by (for training).

The record-by-record form of the negatives the nightly job takes from the impressions table
(``batch.nightly.training_data.impression_negatives``): a list served at ``t`` is *closed* at
``t + window``; its items the user did not engage with by then (an engaging event on them in
``(t, t + window]``, batch.attribution's definition) are negatives from then on. A replay that
serves lists (``recsys evaluate``) feeds it, so its simulated nightly job trains on them exactly as
the real one would.

>>> shown = ShownLists(window_ms=100, engaging={"click"})
>>> shown.shown("u", 0, ["a", "b", "c"])
>>> shown.event("u", "b", 50, "click")
>>> shown.not_engaged("u", 99, 5), shown.not_engaged("u", 100, 5)  # open until its window closes
([], ['c', 'a'])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection


class ShownLists:
    """Per user, the newest ``keep`` lists: (shown at, items, engaged items)."""

    def __init__(self, window_ms: int, engaging: Collection[str], keep: int = 10) -> None:
        self.window_ms = window_ms
        self.engaging = frozenset(engaging)
        self.keep = keep
        self.lists: dict[str, deque[tuple[int, list[str], set[str]]]] = {}

    def shown(self, user: str, t: int, items: list[str]) -> None:
        self.lists.setdefault(user, deque(maxlen=self.keep)).append((t, list(items), set()))

    def event(self, user: str, item: str, t: int, event_type: str) -> None:
        """Call before the event's own examples are made (an event at a list's closing time engages it)."""
        if event_type not in self.engaging:
            return
        for shown_at, items, engaged in self.lists.get(user, ()):
            if shown_at < t <= shown_at + self.window_ms and item in items:
                engaged.add(item)

    def not_engaged(self, user: str, t: int, n: int) -> list[str]:
        """Up to ``n`` distinct items of the lists closed by ``t`` that were not engaged with, newest
        list first and each list's last place first (as the nightly job takes them)."""
        out: list[str] = []
        for shown_at, items, engaged in reversed(self.lists.get(user, ())):
            if shown_at + self.window_ms > t:
                continue
            for item in reversed(items):
                if item not in engaged and item not in out:
                    out.append(item)
                    if len(out) == n:
                        return out
        return out


__all__ = ["ShownLists"]
