"""Live attribution, one record at a time: the counting the attribution job runs over the stream.

The same definition as the batch join (``batch.attribution``): a shown item is engaged when the
same user has an event of an engaging type on it with ``shown_at < event_time <= shown_at +
window``; a list logged twice and an event delivered twice count once. Here the two streams
arrive interleaved and in any order within the lateness bound, so each user keeps

* the lists whose window may still catch an event (an event arriving later engages them), and
* the engaging events an impression arriving later may still claim (the API logs a list a few
  ms after the stream saw the user's previous event; a replay may deliver either first).

Each record returns the counter increments it causes (:class:`Increment`), so the counts move the
moment the engaging event arrives, not when the window closes. State is dropped once no record
that is not late could still match it; late records (``streaming.lateness``, per topic
partition) are counted and not attributed.

>>> live = LiveAttribution(window_ms=60_000, engaging={"click"}, slack_ms=0)
>>> imp = {"request_id": "r1", "user_id": "u", "model_version": "v1", "arm": None, "served_at_ms": 0,
...        "event_clock_ms": 1000, "items": [{"item_id": "a", "position": 0, "sources": ["similar"]},
...                                          {"item_id": "b", "position": 1, "sources": ["popular"]}]}
>>> sorted((i.field, i.amount) for i in live.impression(imp, partition=0))
[('lists', 1), ('shown', 2), ('src:popular:1:shown', 1), ('src:similar:0:shown', 1)]
>>> ev = {"event_id": "e1", "user_id": "u", "item_id": "b", "event_type": "click", "event_time": 1500}
>>> sorted((i.field, i.amount) for i in live.event(ev, partition=1))
[('engaged', 1), ('hits', 1), ('src:popular:1:engaged', 1)]
>>> live.event(ev, partition=1)  # the same event again: counted once
[]
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from streaming.lateness import Lateness

NO_ARM = "-"  # lists served outside any experiment (as batch.attribution spells it)


@dataclass(frozen=True)
class Increment:
    """Add ``amount`` to ``field`` of the (version, arm) counters; ``user`` marks the user reached."""

    version: str
    arm: str
    field: str
    amount: int = 1
    user: str | None = None


def shown_at(record: dict) -> int:
    """When a served list counts as shown: its ``event_clock_ms`` (the stream's event time when the
    API served it, so a replayed log is attributed in its own time), else its wall-clock ``served_at_ms``."""
    return int(record["event_clock_ms"] if record.get("event_clock_ms") is not None else record["served_at_ms"])


def source_field(source: str, position: int, what: str) -> str:
    """The counter of one source at one position: ``src:<source>:<position>:shown|engaged``."""
    return f"src:{source}:{position}:{what}"


@dataclass
class _List:
    request_id: str
    version: str
    arm: str
    shown_at: int
    items: dict[str, tuple[int, tuple[str, ...]]]  # item -> (position, sources)
    engaged: set[str] = field(default_factory=set)


@dataclass
class _User:
    lists: list[_List] = field(default_factory=list)
    events: dict[str, tuple[str, int]] = field(default_factory=dict)  # engaging event id -> (item, time)
    requests: set[str] = field(default_factory=set)


class UserStore(Protocol):
    """Where each user's state is kept: a dict here, Flink map state in the job (a value is put
    back after every change, so a store that serialises values sees it)."""

    def get(self, user_id: str) -> "_User | None": ...
    def put(self, user_id: str, user: "_User") -> None: ...
    def remove(self, user_id: str) -> None: ...
    def items(self) -> Iterable[tuple[str, "_User"]]: ...


class DictUsers(dict):
    """A :class:`UserStore` in memory."""

    def put(self, user_id: str, user: "_User") -> None:
        self[user_id] = user

    def remove(self, user_id: str) -> None:
        del self[user_id]


class LiveAttribution:
    """Per-user pending lists and engaging events, and the increments each new record causes."""

    def __init__(self, window_ms: int, engaging: Collection[str], slack_ms: int, users: UserStore | None = None) -> None:
        self.window_ms = window_ms
        self.engaging = frozenset(engaging)
        self.lateness = Lateness(slack_ms)
        self.users: UserStore = users if users is not None else DictUsers()
        self.late = 0  # records not attributed because they came too late
        self.newest = {"impressions": -1, "events": -1}  # the newest time seen on each stream

    # -- records -------------------------------------------------------------------------------
    def impression(self, record: dict, partition: int) -> list[Increment]:
        at = shown_at(record)
        if self._late("impressions", partition, at):
            return []
        user = self.users.get(record["user_id"]) or _User()
        if record["request_id"] in user.requests:
            return []
        user.requests.add(record["request_id"])
        shown = _List(record["request_id"], record["model_version"], record.get("arm") or NO_ARM, at,
                      {i["item_id"]: (int(i["position"]), tuple(i["sources"])) for i in record["items"]})
        user.lists.append(shown)
        v, a = shown.version, shown.arm
        out = [Increment(v, a, "lists", user=record["user_id"]), Increment(v, a, "shown", len(shown.items))]
        for position, sources in shown.items.values():
            out += [Increment(v, a, source_field(s, position, "shown")) for s in sources]
        for item, t in user.events.values():  # engaging events that arrived before the list
            out += self._engage(shown, item, t)
        self.users.put(record["user_id"], user)
        return out

    def event(self, record: dict, partition: int) -> list[Increment]:
        t = int(record["event_time"])
        if self._late("events", partition, t) or record["event_type"] not in self.engaging:
            return []
        user = self.users.get(record["user_id"]) or _User()
        if record["event_id"] in user.events:
            return []
        user.events[record["event_id"]] = (record["item_id"], t)
        out = [inc for shown in user.lists for inc in self._engage(shown, record["item_id"], t)]
        self.users.put(record["user_id"], user)
        return out

    def _engage(self, shown: _List, item: str, t: int) -> list[Increment]:
        if item not in shown.items or item in shown.engaged or not shown.shown_at < t <= shown.shown_at + self.window_ms:
            return []
        position, sources = shown.items[item]
        out = [Increment(shown.version, shown.arm, "engaged")]
        if not shown.engaged:
            out.append(Increment(shown.version, shown.arm, "hits"))
        shown.engaged.add(item)
        return out + [Increment(shown.version, shown.arm, source_field(s, position, "engaged")) for s in sources]

    def _late(self, stream: str, partition: int, t: int) -> bool:
        """The lateness rule per partition (``partition`` numbers must differ across the two streams)."""
        if self.lateness.observe(partition, t):
            self.late += 1
            return True
        self.newest[stream] = max(self.newest[stream], t)
        return False

    def horizon(self) -> int:
        """Records older than this are not attributed any more, so state older than it can go.

        The slower of the two streams sets it (as a watermark over both inputs): a topic read
        behind the other must still find its partners. But a stream that lags by more than a
        window, or is idle, holds it back by one window at most, so the state stays bounded;
        records of a stream that far behind may miss matches."""
        seen = [t for t in self.newest.values() if t >= 0]
        if not seen:
            return -1
        newest, slowest = max(seen), (min(seen) if len(seen) == len(self.newest) else -1)  # a stream not seen yet lags
        return max(slowest, newest - self.window_ms) - self.lateness.slack_ms

    # -- state ---------------------------------------------------------------------------------
    def expire(self) -> int:
        """Drop what no record that is not late can still match; returns the users dropped.

        A record is accepted down to the :meth:`horizon`: an event that old can still engage lists
        shown up to a window before it, an impression that old claims only later events."""
        horizon = self.horizon()
        changed: dict[str, _User | None] = {}
        for user_id, user in list(self.users.items()):
            lists = [s for s in user.lists if s.shown_at + self.window_ms >= horizon]
            events = {e: (i, t) for e, (i, t) in user.events.items() if t >= horizon}
            if not lists and not events:
                changed[user_id] = None
            elif len(lists) != len(user.lists) or len(events) != len(user.events):
                changed[user_id] = _User(lists, events, {s.request_id for s in lists})
        for user_id, user in changed.items():
            if user is None:
                self.users.remove(user_id)
            else:
                self.users.put(user_id, user)
        return sum(1 for u in changed.values() if u is None)


__all__ = ["DictUsers", "Increment", "LiveAttribution", "NO_ARM", "UserStore", "shown_at", "source_field"]
