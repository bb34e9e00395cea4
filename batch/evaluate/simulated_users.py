"""The held-out period played as traffic by simulated users, to judge served versions live.

Each held-out event becomes a request: the API serves its user a list (as the API is at the day
boundary: features and history before it), and the simulated user engages with a shown item when
the real log says they interacted with it within the attribution window after that event. An
engagement is a click sent to a topic of its own (not the events topic: the real day is played
later, and the lake, the features and the learner must not see invented clicks), which the
attribution job joins with the impressions. Used by the demo to run guarded rollouts.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable

import httpx

from streaming.events import Event


@dataclass
class Played:
    lists: int = 0
    engaged: int = 0


def play(url: str, history: list[Event], holdout: list[Event], window_ms: int,
         click: Callable[[str, str, int], None], done: Callable[[], bool], k: int = 10) -> Played:
    """One list per held-out event until ``done()``; ``click(user, item, n)`` reports the n-th engagement."""
    seen: dict[str, set[str]] = {}
    for e in history:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    future: dict[str, tuple[list[int], list[str]]] = {}
    for e in holdout:
        times, items = future.setdefault(e.user_id, ([], []))
        times.append(e.event_time)
        items.append(e.item_id)
    played = Played()
    with httpx.Client(base_url=url, timeout=30) as client:
        for e in holdout:
            if done():
                break
            user = e.user_id
            r = client.post("/recommendations", json={"user_ids": [user], "k": k,
                                                      "exclude": {user: sorted(seen.get(user, ()))}})
            r.raise_for_status()
            shown = {i["item_id"] for i in r.json()["results"][0]["items"]}
            played.lists += 1
            times, items = future[user]
            upcoming = set(items[bisect_right(times, e.event_time):bisect_left(times, e.event_time + window_ms + 1)])
            for item in sorted(shown & upcoming):
                click(user, item, played.engaged)
                played.engaged += 1
    return played


__all__ = ["Played", "play"]
