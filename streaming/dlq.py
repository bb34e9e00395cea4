"""Dead-letter records: the original bytes, untouched, plus why and when they were rejected.

The record value is exactly the bytes we received (or the best serialisation of a rejected
Python object), the key is kept, and the reason travels in headers (the Kafka Connect DLQ
convention), so nothing about the bad input is lost and it can be fixed and replayed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from streaming.events import Event

REASON_HEADER = "dlq.reason"
DETAIL_HEADER = "dlq.detail"
STAGE_HEADER = "dlq.stage"
TIME_HEADER = "dlq.time_ms"
SOURCE_HEADER = "dlq.source"
MAX_DETAIL_CHARS = 1000
Stage = Literal["produce", "consume", "stream"]  # the producer library, a validating consumer, the stream job
STAGES: tuple[str, ...] = Stage.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeadLetter:
    value: bytes
    key: bytes | None
    reason: str
    detail: str
    stage: Stage
    time_ms: int
    source: str  # topic/partition/offset for consumed records, producer client id otherwise

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (REASON_HEADER, self.reason.encode()),
            (DETAIL_HEADER, self.detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
            (STAGE_HEADER, self.stage.encode()),
            (TIME_HEADER, str(self.time_ms).encode()),
            (SOURCE_HEADER, self.source.encode()),
        ]

    @classmethod
    def from_record(cls, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]) -> "DeadLetter":
        h = {k: v.decode("utf-8", "replace") for k, v in headers or []}
        return cls(
            value=value or b"",
            key=key,
            reason=h.get(REASON_HEADER, "unknown"),
            detail=h.get(DETAIL_HEADER, ""),
            stage=h.get(STAGE_HEADER, "unknown"),
            time_ms=int(h.get(TIME_HEADER, "0") or 0),
            source=h.get(SOURCE_HEADER, ""),
        )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def original_bytes(obj: Any) -> bytes:
    """The rejected input as bytes, as close to what the caller gave us as possible."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8", errors="surrogateescape")
    if isinstance(obj, Event):
        return obj.model_dump_json().encode()
    try:
        return json.dumps(obj, default=repr).encode()
    except (TypeError, ValueError):
        return repr(obj).encode("utf-8", "replace")


def key_of(obj: Any) -> bytes | None:
    """Best-effort partition key (user_id) of a rejected object, to keep it near its user."""
    user = obj.get("user_id") if isinstance(obj, dict) else None
    return str(user).encode() if user is not None else None


@dataclass
class DeadLetterCounts:
    """What a sender dead-lettered: by reason, acknowledged, and the sends that failed."""

    rejected: int = 0
    dlq_acked: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[Any, Exception]] = field(default_factory=list)


@dataclass
class DeadLetterSender:
    """The one way a record reaches the DLQ topic: built as a :class:`DeadLetter`, sent with its
    headers, counted in ``counts`` (any object with ``rejected``, ``reasons``, ``dlq_acked``,
    ``failed``: the producer's and consumer's delivery reports, or :class:`DeadLetterCounts`).
    A send that fails is recorded in ``counts.failed`` and handed to ``on_failure``."""

    producer: Any  # a kafka.KafkaProducer (infra.kafka_clients.producer)
    topic: str
    stage: Stage
    counts: Any = field(default_factory=DeadLetterCounts)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_failure: Callable[[DeadLetter, Exception], None] | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"dead-letter stage {self.stage!r}: choose from {', '.join(STAGES)}")

    def send(self, value: bytes, key: bytes | None, reason: str, detail: str, source: str) -> Any:
        """Send one rejected record; returns the Kafka future (None if the send itself failed)."""
        from kafka.errors import KafkaError

        letter = DeadLetter(value=value, key=key, reason=reason, detail=detail, stage=self.stage,
                            time_ms=now_ms(), source=source)
        with self.lock:
            self.counts.rejected += 1
            self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1
        try:
            future = self.producer.send(self.topic, key=letter.key, value=letter.value, headers=letter.headers())
        except KafkaError as exc:
            self._failed(letter, exc)
            return None

        def acked(_: Any) -> None:
            self.counts.dlq_acked += 1

        future.add_callback(acked)
        future.add_errback(lambda exc: self._failed(letter, exc))
        return future

    def _failed(self, letter: DeadLetter, exc: Exception) -> None:
        with self.lock:
            self.counts.failed.append((letter, exc))
        if self.on_failure is not None:
            self.on_failure(letter, exc)
