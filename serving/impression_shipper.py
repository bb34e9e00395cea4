"""The impression shipper: the Kafka producer of the impression log, in a process of its own.

kafka-python's threads inside the API's process competed with requests for the interpreter
(p99 at 300 rps from 16-21 ms to 43-2,000 ms: docs/closing_the_loop.md), so the API's sender
thread (:class:`serving.impressions.ImpressionLog`) only writes batches of serialised lists into
a pipe; this process sends each list to ``topics.impressions``, keyed by user, and keeps the
(sent, lost) counts in shared memory for the API's metrics. It imports nothing of the API (no
model, no torch): a spawned interpreter starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from infra.settings import Settings

log = logging.getLogger(__name__)


class ShipperProcess:
    """The Kafka producer in a child process, fed through a pipe; counters in shared memory."""

    def __init__(self, settings: Settings) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the API's heap
        self._reader, self._writer = context.Pipe(duplex=False)
        self._counters = context.Array("q", 2, lock=False)  # (sent, lost), written by the child only
        self._process = context.Process(target=ship, args=(settings, self._reader, self._counters),
                                        name="impression-shipper", daemon=True)
        self._process.start()
        self._reader.close()

    def write(self, records: list[bytes]) -> None:
        if not self._process.is_alive():
            raise BrokenPipeError(f"the impression shipper exited (code {self._process.exitcode})")
        self._writer.send_bytes(b"\n".join(records))  # blocks this thread only while the child is behind

    def settled(self) -> tuple[int, int]:
        return int(self._counters[0]), int(self._counters[1])

    def close(self, timeout_s: float) -> None:
        self._writer.close()  # the child sends what it has read, then sees the end
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1)


def ship(settings: Settings, pipe: Any, counters: Any) -> None:
    """The shipper process: each batch from the pipe to ``topics.impressions``, keyed by user."""
    topic, retry_s = settings.topics.impressions, settings.serving.impression_retry_s
    producer = None
    while True:
        try:
            records = pipe.recv_bytes().split(b"\n")
        except (EOFError, OSError):
            break
        try:
            if producer is None:
                producer = _producer(settings)
            futures = [producer.send(topic, key=_user_key(r), value=r) for r in records]
            producer.flush(timeout=10)
            failed = sum(1 for f in futures if not f.succeeded())
        except Exception as exc:  # noqa: BLE001 - counted; the broker is tried again after a pause
            log.warning("impression shipper: %d impressions not sent (%s)", len(records), exc)
            counters[1] += len(records)
            _close(producer)
            producer = None
            time.sleep(retry_s)
            continue
        counters[0] += len(records) - failed
        counters[1] += failed
    _close(producer)


def _user_key(record: bytes) -> bytes:
    return orjson.loads(record)["user_id"].encode()


def _close(producer: Any) -> None:
    if producer is not None:
        try:
            producer.close(timeout=5)
        except Exception:  # noqa: BLE001 - closing a producer of a dead broker
            pass


def _producer(settings: Settings) -> Any:
    from infra import kafka_clients

    return kafka_clients.producer(settings, "impressions", acks="all", linger_ms=20, retries=3,
                                  max_block_ms=2_000, request_timeout_ms=5_000)


__all__ = ["ShipperProcess", "ship"]
