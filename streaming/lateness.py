"""When an event is late: the one rule of the stream job, and of the online learner that mirrors it.

Per Kafka partition, in offset order: an event is late when it is older than the newest event
time of its partition so far by more than ``stream.out_of_orderness_ms +
stream.allowed_lateness_ms``. Deciding it from the partition's own records in offset order (not
from arrival time) means a replay after a crash decides every event the same way. Late events
land in the lake (``late = true``) and in no feature and no training.

>>> rule = Lateness(slack_ms=10)
>>> [rule.observe(0, t) for t in (100, 95, 89, 90)]
[False, False, True, False]
>>> rule.observe(1, 0), rule.newest
(False, {0: 100, 1: 0})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.settings import StreamSettings


class Lateness:
    """The lateness rule with where it stands (``newest``: per partition, the newest event time)."""

    __slots__ = ("slack_ms", "newest")

    def __init__(self, slack_ms: int, newest: dict[int, int] | None = None) -> None:
        self.slack_ms = slack_ms
        self.newest = newest if newest is not None else {}

    @classmethod
    def for_settings(cls, stream: "StreamSettings", newest: dict[int, int] | None = None) -> "Lateness":
        return cls(stream.out_of_orderness_ms + stream.allowed_lateness_ms, newest)

    def observe(self, partition: int, event_time: int) -> bool:
        """Whether this event, the next of its partition in offset order, is late."""
        newest = self.newest.get(partition, -1)
        if event_time > newest:
            self.newest[partition] = event_time
            return False
        return event_time < newest - self.slack_ms


__all__ = ["Lateness"]
