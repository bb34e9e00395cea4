"""Producer library for backends: validate, batch, retry, acknowledge, never lose an event.

Needs a running broker, so this is an example to copy rather than a doctest::

    with EventProducer(load_settings()) as producer:
        producer.send({"event_id": "e1", "user_id": 1, "item_id": 2, "event_type": "click",
                       "event_time": 1700000000000})
        report = producer.flush()

Valid events go to the events topic keyed by ``user_id``; invalid ones go to the dead-letter
topic with the reason (``send`` returns ``None`` for them, or raises with ``strict=True``).
Deliveries are acknowledged by the broker (``acks=all`` by default) and settled in the calling
thread during ``send``/``flush`` (so ``on_delivery``/``on_error`` callbacks run there too); a
delivery that still fails after the retries is kept in ``report.failed`` and reported by
:meth:`flush`, so the caller can resend it. The buffer is bounded (``producer.max_buffered_events`` unacknowledged
events): when it is full
``send`` blocks up to ``max_block_ms`` and then raises :class:`ProducerBackpressure` carrying the
event, rather than dropping it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.errors import KafkaTimeoutError

from infra import kafka_clients
from infra.kafka_clients import broker_hint
from infra.settings import Settings
from streaming.dlq import DeadLetterSender, key_of, original_bytes
from streaming.events import Event, InvalidEvent, decode_event, validate_and_encode
from streaming.vocabulary import EventVocabulary

DeliveryCallback = Callable[[Event, "Delivery"], None]
ErrorCallback = Callable[[Any, Exception], None]


class ProducerBackpressure(RuntimeError):
    """The bounded client buffer stayed full for ``max_block_ms``; ``event`` was not sent."""

    def __init__(self, message: str, event: Event) -> None:
        super().__init__(message)
        self.event = event


class DeliveryFailed(RuntimeError):
    """Some events were not acknowledged after all retries; they are in ``failed``."""

    def __init__(self, message: str, failed: list[tuple[Any, Exception]]) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass
class DeliveryReport:
    sent: int = 0
    acked: int = 0
    rejected: int = 0  # invalid events routed to the DLQ
    dlq_acked: int = 0
    failed: list[tuple[Any, Exception]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """Where an acknowledged event landed (``offset`` is None where the broker did not say)."""

    topic: str
    partition: int | None
    offset: int | None


@dataclass
class _InFlightBatch:
    """The records of one broker batch, kept as wire bytes until the batch is acknowledged.

    Bytes are not tracked by the garbage collector, pydantic models are: holding ~100k
    unacknowledged models made every full GC pass walk them (measurable in ingest throughput).
    Events are decoded again only for callbacks and failures.
    """

    future: Any  # kafka-python FutureProduceResult shared by the batch's records
    payloads: list[bytes]


class CachedKeyPartitioner:
    """kafka-python's default partitioner (murmur2 of the key, like the Java client), memoised.

    Keys are user ids and a user sends many events, so the pure-Python murmur2 per record is
    worth caching; results are identical to the default partitioner's, so other producers keep
    writing a user's events to the same partition.
    """

    def __init__(self, max_keys: int = 200_000) -> None:
        self._cache: dict[tuple[bytes, int], int] = {}
        self._max_keys = max_keys

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return DefaultPartitioner()(key, all_partitions, available)
        slot = (key, len(all_partitions))
        idx = self._cache.get(slot)
        if idx is None:
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            idx = self._cache[slot] = (murmur2(key) & 0x7FFFFFFF) % len(all_partitions)
        return all_partitions[idx]


class EventProducer:
    """Validating, batching Kafka producer for :class:`~streaming.events.Event`."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        strict: bool = False,
        on_delivery: DeliveryCallback | None = None,
        on_error: ErrorCallback | None = None,
        **kafka_overrides: Any,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.events
        self.dlq_topic = settings.topics.dlq
        self.strict = strict
        self.max_event_bytes = settings.producer.max_event_bytes
        self.aliases = EventVocabulary.from_settings(settings).aliases  # the topic carries the engine's type names
        self._on_delivery = on_delivery
        self._on_error = on_error
        self._lock = threading.Lock()
        self.report = DeliveryReport()
        p = settings.producer
        # Deliveries are tracked per broker batch (all records of a batch are acked together) and
        # settled in the caller's thread: per-event callbacks or per-event futures kept alive
        # cost more than validating the event does.
        self._batches: dict[int, _InFlightBatch] = {}
        self._in_flight = 0
        self._max_buffered = p.max_buffered_events
        self._max_block_s = p.max_block_ms / 1000.0
        config: dict[str, Any] = dict(
            acks=p.acks,
            linger_ms=p.linger_ms,
            batch_size=p.batch_size,
            max_block_ms=p.max_block_ms,
            retries=p.retries,
            request_timeout_ms=p.request_timeout_ms,
            compression_type=p.compression_type,
            max_request_size=max(1024 * 1024, 4 * p.max_event_bytes),
            partitioner=CachedKeyPartitioner(),
        )
        config.update(kafka_overrides)
        self._producer = kafka_clients.producer(settings, "producer", **config)
        self._dlq = DeadLetterSender(self._producer, self.dlq_topic, "produce", counts=self.report, lock=self._lock,
                                     on_failure=self._on_error)

    # -- sending -------------------------------------------------------------------------
    def send(self, obj: Event | dict[str, Any] | bytes | str) -> Any:
        """Validate and send one event; returns the Kafka future, or None if it went to the DLQ."""
        return self._send(obj)[0]

    def send_or_reason(self, obj: Event | dict[str, Any] | bytes | str) -> InvalidEvent | None:
        """Validate and send one event; returns why it went to the DLQ instead (None: sent), for
        callers that report the reason back (the API's POST /events)."""
        return self._send(obj)[1]

    def _send(self, obj: Event | dict[str, Any] | bytes | str) -> tuple[Any, InvalidEvent | None]:
        try:
            event, payload = validate_and_encode(obj, self.aliases)
            if len(payload) > self.max_event_bytes:
                raise InvalidEvent(
                    "oversize", f"{len(payload)} bytes > limit {self.max_event_bytes}"
                )
        except InvalidEvent as exc:
            self._dead_letter(obj, exc)
            if self.strict:
                raise
            return None, exc
        if self._in_flight >= self._max_buffered:
            self._reap(block_for_one=True, event=event)
        try:
            future = self._producer.send(self.topic, key=event.key, value=payload)
        except KafkaTimeoutError as exc:
            raise ProducerBackpressure(
                f"no metadata or buffer space within {self.settings.producer.max_block_ms} ms "
                f"({broker_hint(self.settings)}); the event was not sent: retry it",
                event,
            ) from exc
        self.report.sent += 1
        batch_future = getattr(future, "_produce_future", future)
        batch = self._batches.get(id(batch_future))
        if batch is None:
            batch = self._batches[id(batch_future)] = _InFlightBatch(batch_future, [])
        batch.payloads.append(payload)
        self._in_flight += 1
        if self.report.sent & 0x3FF == 0:
            self._reap()
        return future, None

    def send_many(self, events: Iterable[Event | dict[str, Any] | bytes | str]) -> int:
        """Send each event; returns how many were accepted (not routed to the DLQ)."""
        accepted = 0
        for obj in events:
            if self.send(obj) is not None:
                accepted += 1
        return accepted

    def _dead_letter(self, obj: Any, exc: InvalidEvent) -> None:
        self._dlq.send(original_bytes(obj), key_of(obj), exc.reason, exc.detail, self.settings.broker.client_id)

    # -- delivery tracking ------------------------------------------------------------------
    def _reap(self, block_for_one: bool = False, event: Event | None = None) -> None:
        """Settle finished batches; optionally wait for the oldest one to free buffer space."""
        if block_for_one and self._batches:
            oldest = next(iter(self._batches.values()))
            if not oldest.future.is_done and not oldest.future.wait(self._max_block_s):
                raise ProducerBackpressure(
                    f"{self._max_buffered} events still unacknowledged after "
                    f"{self.settings.producer.max_block_ms} ms ({broker_hint(self.settings)}); "
                    "the event was not sent: retry it later or raise producer.max_buffered_events",
                    event,  # type: ignore[arg-type]
                )
        for key in [k for k, b in self._batches.items() if b.future.is_done]:
            batch = self._batches.pop(key)
            self._in_flight -= len(batch.payloads)
            if batch.future.succeeded():
                self.report.acked += len(batch.payloads)
                if self._on_delivery is not None:
                    tp = getattr(batch.future, "topic_partition", None)
                    base = batch.future.value[0] if isinstance(batch.future.value, tuple) else None
                    for i, payload in enumerate(batch.payloads):
                        offset = base + i if isinstance(base, int) and base >= 0 else None
                        delivery = Delivery(self.topic, getattr(tp, "partition", None), offset)
                        self._on_delivery(decode_event(payload), delivery)
            else:
                for payload in batch.payloads:
                    self._failed(decode_event(payload), batch.future.exception)

    def _failed(self, obj: Any, exc: Exception) -> None:
        with self._lock:
            self.report.failed.append((obj, exc))
        if self._on_error is not None:
            self._on_error(obj, exc)

    # -- lifecycle -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None, raise_on_failure: bool = True) -> DeliveryReport:
        """Wait for every send to be acknowledged; raise :class:`DeliveryFailed` if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as exc:
            raise DeliveryFailed(
                f"flush timed out after {timeout}s with deliveries pending ({broker_hint(self.settings)})",
                list(self.report.failed),
            ) from exc
        self._reap()
        if raise_on_failure and self.report.failed:
            first = self.report.failed[0][1]
            raise DeliveryFailed(
                f"{len(self.report.failed)} event(s) were not acknowledged (first error: {first!r}); "
                "they are kept in .report.failed: check the broker (`recsys status`) and resend them",
                list(self.report.failed),
            )
        return self.report

    def close(self, timeout: float | None = 30.0) -> None:
        try:
            self.flush(timeout=timeout, raise_on_failure=False)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
