"""The impression log: every list the API serves goes to the ``impressions`` topic, off the request path.

What was shown, and what was then taken or not, is what live attribution per model version,
experiments and shown-but-not-engaged training negatives read (issue 22). A request only appends
its serialised list to a bounded in-memory buffer (:meth:`ImpressionLog.log` never blocks and never
raises); one background thread hands the buffer in batches to the shipper process
(:mod:`serving.impression_shipper`), which owns the Kafka producer. When the buffer is full (the
broker or the shipper is behind) the new impression is dropped and counted, and so is one the
broker did not acknowledge: ``recsys_impressions_total{outcome}`` says how many were ``sent``,
``dropped_buffer_full`` and ``dropped_send_failed``. Serving never waits for the log.

One record per served list, JSON, keyed by user (one user's lists stay in order on a partition):

>>> imp = Impression("r1", "u7", "v0003", None, 1_700_000_000_000, 893_000_000_000,
...                  (ScoredItem("50", 0.91, ["similar"]), ScoredItem("181", 0.88, ["similar", "popular"])))
>>> record = orjson.loads(imp.to_json())
>>> record["request_id"], [(i["item_id"], i["position"]) for i in record["items"]], record["event_clock_ms"]
('r1', [('50', 0), ('181', 1)], 893000000000)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import orjson

from infra.settings import Settings
from serving.impression_shipper import ShipperProcess
from serving.recommender import Recommendation, ScoredItem

log = logging.getLogger(__name__)
OUTCOMES = ("sent", "dropped_buffer_full", "dropped_send_failed")


def new_request_id() -> str:
    """The id a served list is known by: in the response, in its impression, in later attribution."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Impression:
    """One served list. ``served_at_ms``: wall clock; ``event_clock_ms``: the stream's event time at
    serving (what a replayed log's events are attributed against), None when unknown."""

    request_id: str
    user_id: str
    model_version: str
    arm: str | None
    served_at_ms: int
    event_clock_ms: int | None
    items: tuple[ScoredItem, ...]  # in the order shown

    def to_json(self) -> bytes:
        return orjson.dumps({
            "request_id": self.request_id, "user_id": self.user_id, "model_version": self.model_version,
            "arm": self.arm, "served_at_ms": self.served_at_ms, "event_clock_ms": self.event_clock_ms,
            "items": [{"item_id": i.item_id, "position": p, "score": i.score, "sources": list(i.sources)}
                      for p, i in enumerate(self.items)],
        })


class Sink(Protocol):
    """Where the sender thread puts batches: the shipper process, or a test's stand-in."""

    def write(self, records: list[bytes]) -> None: ...  # raises when the records cannot be handed over
    def settled(self) -> tuple[int, int]: ...  # (acknowledged by the broker, lost) so far
    def close(self, timeout_s: float) -> None: ...


class ImpressionLog:
    """A bounded buffer and one sender thread that hands batches to a :class:`Sink` (by default
    :class:`ShipperProcess`: the Kafka producer runs in its own process, so its work never
    competes with requests for this process's interpreter). ``count(outcome, n)`` is told every
    outcome (the API's Prometheus counter)."""

    def __init__(self, settings: Settings, count: Callable[[str, int], None] = lambda outcome, n: None,
                 sink_factory: Callable[[], Sink] | None = None) -> None:
        cfg = settings.serving
        self.capacity = cfg.impression_buffer
        self.batch = cfg.impression_batch
        self._retry_s = cfg.impression_retry_s
        self._count = count
        self._factory = sink_factory or (lambda: ShipperProcess(settings))
        self._buffer: deque[bytes] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sink: Sink | None = None
        self._written = 0  # handed to the sink
        self._reported = (0, 0)  # the sink's (sent, lost) already counted

    def log(self, impression: Impression) -> bool:
        """Queue one served list; False (and counted) when the buffer is full. Never blocks on the broker."""
        record = impression.to_json()
        with self._wake:
            if len(self._buffer) >= self.capacity:
                self._count("dropped_buffer_full", 1)
                return False
            self._buffer.append(record)
            if len(self._buffer) >= self.batch:
                self._wake.notify()
        return True

    @property
    def pending(self) -> int:
        """Lists not yet settled: buffered, or handed over and not yet acknowledged or lost."""
        sent, lost = self._reported
        return len(self._buffer) + self._written - sent - lost

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Hand over what is buffered and let the shipper send it (for at most ``timeout_s``);
        whatever is still unsent then is counted as lost."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._sink is not None:
            self._sink.close(timeout_s)
            self._settle(final=True)
            self._sink = None

    def _take(self) -> list[bytes]:
        with self._wake:
            if not self._stopping and len(self._buffer) < self.batch:
                self._wake.wait(timeout=0.1)  # at most 100 ms from serving to handing over
            n = min(len(self._buffer), self.batch)
            return [self._buffer.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._hand_over(batch)
            elif self._stopping:
                return
            self._settle()

    def _hand_over(self, batch: list[bytes]) -> None:
        try:
            if self._sink is None:
                self._sink = self._factory()
            self._sink.write(batch)
            self._written += len(batch)
        except Exception as exc:  # noqa: BLE001 - the shipper's trouble must never reach a request
            log.warning("impression log: %d impressions not handed over (%s); trying again in %.0f s",
                        len(batch), exc, self._retry_s)
            self._count("dropped_send_failed", len(batch))
            self._restart()

    def _settle(self, final: bool = False) -> None:
        """Count what the sink settled since the last look; at the end, the rest is lost."""
        if self._sink is None:
            return
        try:
            sent, lost = self._sink.settled()
        except Exception:  # noqa: BLE001 - a dead shipper
            sent, lost = self._reported
        if final:
            lost = self._written - sent
        old_sent, old_lost = self._reported
        if sent > old_sent:
            self._count("sent", sent - old_sent)
        if lost > old_lost:
            self._count("dropped_send_failed", lost - old_lost)
        self._reported = (sent, lost)

    def _restart(self) -> None:
        """Give up on this sink (what it did not settle is lost) and wait before making a new one."""
        if self._sink is not None:
            self._sink.close(0)
            self._settle(final=True)
            self._sink, self._written, self._reported = None, 0, (0, 0)
        with self._wake:
            if not self._stopping:
                self._wake.wait(timeout=self._retry_s)


def impression(request_id: str, rec: Recommendation, arm: str | None, event_clock_ms: int | None) -> Impression:
    """The impression of a list as the API returns it, served now."""
    return Impression(request_id, rec.user_id, rec.model_version, arm, int(time.time() * 1000), event_clock_ms,
                      tuple(rec.items))


__all__ = ["Impression", "ImpressionLog", "OUTCOMES", "Sink", "impression", "new_request_id"]
