"""A replay whose catalogue moves: real interactions, with some items relaunched under new ids.

MovieLens' catalogue barely changes in its last weeks, so a prequential replay of it says little
about the case online learning is for: items that did not exist at the last nightly run (news,
new arrivals, live content). :func:`renew_items` makes that case out of real data: from
``start_ms`` on, a chosen ``fraction`` of items get a fresh id every ``every_ms`` of event time
(``"50"`` is ``"50~1"`` on the first day, ``"50~2"`` on the second ...). The users, their order
and their choices stay real; only the item is new to every model trained before the period.

>>> from streaming.events import Event
>>> day = 86_400_000
>>> events = [Event(event_id=f"e{i}", user_id="u", item_id="ab"[i % 2], event_type="view", event_time=i * day // 2)
...           for i in range(8)]  # two items, an event every half day
>>> [e.item_id for e in renew_items(events, start_ms=2 * day, every_ms=day, fraction=0.5)]
['a', 'b', 'a', 'b', 'a', 'b~1', 'a', 'b~2']
"""

from __future__ import annotations

import zlib
from typing import Sequence

from streaming.events import Event


RELAUNCH_MARK = "~"  # a relaunched id is the original's, this mark and the period number


def renewed(item_id: str, fraction: float, seed: int) -> bool:
    """Whether ``item_id`` is among the relaunched ``fraction`` (a stable hash, not a draw)."""
    return zlib.crc32(f"{seed}:{item_id}".encode()) / 2**32 < fraction


def renew_items(events: Sequence[Event], start_ms: int, every_ms: int, fraction: float, seed: int = 0) -> list[Event]:
    """The events, with every renewed item's id suffixed by its period number from ``start_ms`` on."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of items to renew must be between 0 and 1, got {fraction}")
    if every_ms <= 0:
        raise ValueError(f"the renewal period must be positive, got {every_ms} ms")
    out = []
    for e in events:
        if e.event_time >= start_ms and renewed(e.item_id, fraction, seed):
            period = (e.event_time - start_ms) // every_ms + 1
            e = e.model_copy(update={"item_id": f"{e.item_id}{RELAUNCH_MARK}{period}"})
        out.append(e)
    return out
