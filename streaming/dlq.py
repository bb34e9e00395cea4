"""Dead-letter records: the original bytes, untouched, plus why and when they were rejected.

The record value is exactly the bytes we received (or the best serialisation of a rejected
Python object), the key is kept, and the reason travels in headers (the Kafka Connect DLQ
convention), so nothing about the bad input is lost and it can be fixed and replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from streaming.events import Event

REASON_HEADER = "dlq.reason"
DETAIL_HEADER = "dlq.detail"
STAGE_HEADER = "dlq.stage"
TIME_HEADER = "dlq.time_ms"
SOURCE_HEADER = "dlq.source"
MAX_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class DeadLetter:
    value: bytes
    key: bytes | None
    reason: str
    detail: str
    stage: str  # "produce" or "consume"
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
