"""The impression log's buffer: bounded, never waits for the broker, counts every loss.

The real path (the shipper process and the broker: every served list in the topic, a dead broker
never failing a request) is tested against the running API in tests/test_serving.py; here the
shipper is a stand-in whose failures are made on purpose, which a real broker does not do on demand.
"""

from __future__ import annotations

import threading
from collections import Counter

import orjson

from infra.settings import Settings
from serving.impressions import Impression, ImpressionLog
from serving.recommender import ScoredItem


def _imp(n: int) -> Impression:
    return Impression(f"r{n}", f"u{n % 3}", "v0001", None, 1_000 + n, None, (ScoredItem("50", 0.5, ["similar"]),))


class _Sink:
    """Records what it was handed; ``lose_every``: every n-th record is not acknowledged."""

    def __init__(self, lose_every: int = 0) -> None:
        self.records: list[bytes] = []
        self.lose_every = lose_every
        self.closed = False

    def write(self, records: list[bytes]) -> None:
        self.records.extend(records)

    def settled(self) -> tuple[int, int]:
        lost = len(self.records) // self.lose_every if self.lose_every else 0
        return len(self.records) - lost, lost

    def close(self, timeout_s: float) -> None:
        self.closed = True


def _log(capacity: int, factory, **serving) -> tuple[ImpressionLog, Counter]:  # noqa: ANN001
    counts: Counter = Counter()
    s = Settings(serving={"impression_buffer": capacity, "impression_batch": 3, "impression_retry_s": 0.05, **serving})
    return ImpressionLog(s, lambda outcome, n: counts.update({outcome: n}), factory), counts


def test_a_full_buffer_drops_new_lists_and_counts_them() -> None:
    log, counts = _log(4, _Sink)
    assert [log.log(_imp(n)) for n in range(6)] == [True] * 4 + [False] * 2
    assert counts == {"dropped_buffer_full": 2} and log.pending == 4


def test_everything_buffered_is_handed_over_in_order_and_counted() -> None:
    sink = _Sink()
    log, counts = _log(100, lambda: sink)
    log.start()
    for n in range(10):
        log.log(_imp(n))
    log.stop()
    assert [orjson.loads(r)["request_id"] for r in sink.records] == [f"r{n}" for n in range(10)]
    assert counts == {"sent": 10} and sink.closed and log.pending == 0


def test_unacknowledged_records_and_a_failing_shipper_are_counted() -> None:
    sink = _Sink(lose_every=2)
    log, counts = _log(100, lambda: sink)
    log.start()
    for n in range(6):
        log.log(_imp(n))
    log.stop()
    assert counts == {"sent": 3, "dropped_send_failed": 3}

    def unreachable() -> _Sink:
        raise ConnectionError("no shipper")

    log, counts = _log(100, unreachable)
    log.start()
    for n in range(5):
        log.log(_imp(n))
    log.stop()
    assert counts["dropped_send_failed"] == 5 and "sent" not in counts


def test_logging_goes_on_while_the_sender_is_stuck_on_the_broker() -> None:
    """A request's append does not wait for a sender blocked in the broker (here: forever, until released)."""
    gate, entered = threading.Event(), threading.Event()
    sink = _Sink()

    def stuck() -> _Sink:
        entered.set()
        gate.wait()
        return sink

    log, counts = _log(5, stuck)
    log.start()
    log.log(_imp(0))
    assert entered.wait(5)  # the sender holds the first batch and is stuck connecting
    results = [log.log(_imp(n)) for n in range(1, 11)]  # would hang here if a request waited for the sender
    assert results == [True] * 5 + [False] * 5 and counts["dropped_buffer_full"] == 5
    gate.set()
    log.stop()
    assert counts["sent"] == 6 and len(sink.records) == 6
