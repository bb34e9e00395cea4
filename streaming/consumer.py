"""Validating consumer: yields valid events, dead-letters the rest, commits only after both.

A malformed record never crashes the consumer: it is copied to the DLQ (original bytes plus
reason and source topic/partition/offset). :meth:`EventConsumer.commit` first waits for those
DLQ writes to be acknowledged, then commits offsets, so a crash in between re-reads records
instead of losing them (at-least-once; ``event_id`` lets sinks de-duplicate).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator

from infra import kafka_clients
from infra.settings import Settings
from streaming.dlq import DeadLetterSender
from streaming.events import Event, InvalidEvent, decode_event
from streaming.vocabulary import EventVocabulary
from streaming.producer import DeliveryFailed, DeliveryReport


@dataclass(frozen=True)
class ConsumedEvent:
    event: Event
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class EventConsumer:
    """Consumer-group member over the events topic with validation and a DLQ."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        topic: str | None = None,
        **kafka_overrides: Any,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.events
        self.max_event_bytes = settings.producer.max_event_bytes
        self.aliases = EventVocabulary.from_settings(settings).aliases
        c = settings.consumer
        config: dict[str, Any] = dict(
            group_id=group_id or c.group_id,
            enable_auto_commit=False,
            auto_offset_reset=c.auto_offset_reset,
            max_poll_records=c.max_poll_records,
            session_timeout_ms=c.session_timeout_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        config.update(kafka_overrides)
        self._consumer = kafka_clients.consumer(settings, "consumer", **config)
        self._dlq = kafka_clients.producer(settings, "dlq", acks="all", retries=settings.producer.retries,
                                           linger_ms=settings.producer.linger_ms)
        self._consumer.subscribe([self.topic])
        self.report = DeliveryReport()
        self._lock = threading.Lock()
        self._dead_letters = DeadLetterSender(self._dlq, settings.topics.dlq, "consume", counts=self.report, lock=self._lock)
        self.valid = 0

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumedEvent]:
        """One poll: valid events in partition order; invalid records are dead-lettered."""
        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedEvent] = []
        for tp, records in batch.items():
            for r in records:
                try:
                    event = decode_event(r.value or b"", self.max_event_bytes, self.aliases)
                except InvalidEvent as exc:
                    self._dead_letter(r, exc)
                    continue
                out.append(ConsumedEvent(event, tp.topic, tp.partition, r.offset, r.timestamp))
        self.valid += len(out)
        return out

    def __iter__(self) -> Iterator[ConsumedEvent]:
        while True:
            yield from self.poll()

    def _dead_letter(self, record: Any, exc: InvalidEvent) -> None:
        self._dead_letters.send(record.value or b"", record.key, exc.reason, exc.detail,
                                f"{record.topic}/{record.partition}/{record.offset}")

    def commit(self) -> None:
        """Make dead letters durable, then commit the consumed offsets."""
        self._dlq.flush()
        if self.report.failed:
            raise DeliveryFailed(
                f"{len(self.report.failed)} dead letter(s) were not acknowledged; offsets NOT committed "
                f"so the records will be re-read: check the broker (`recsys status`)",
                list(self.report.failed),
            )
        self._consumer.commit()

    def committed(self) -> dict[int, int | None]:
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(self.topic) or set()
        return {p: self._consumer.committed(TopicPartition(self.topic, p)) for p in sorted(parts)}

    def close(self) -> None:
        try:
            self._dlq.flush()
        finally:
            self._dlq.close()
            self._consumer.close(autocommit=False)

    def __enter__(self) -> "EventConsumer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
