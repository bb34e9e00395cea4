"""One Kafka partition's micro-batch, read into lake rows and the on-time events features take.

The Java side hands the partition function ``(partition, offsets, payloads, oldest Kafka time)``
rows (see streaming.job.feature_job). Reading one is three jobs in one pass, in offset order:
decode (a bad record goes to ``dead_letter`` with its reason and is not kept), lateness
(streaming.lateness: a late event lands in the lake flagged, and in no feature) and the lake
row. Pure Python, so it is tested without Flink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from streaming.events import Aliases, Event, InvalidEvent, decode_event
from streaming.lake import LakeRow
from streaming.lateness import Lateness

DeadLetter = Callable[[bytes, int, int, str, str], None]  # (payload, partition, offset, reason, detail)


@dataclass
class MicroBatch:
    partition: int
    records: list[tuple[int, bytes]]  # (offset, payload), in offset order
    oldest_ms: int | None  # Kafka timestamp of its oldest record (None: unknown)

    @classmethod
    def from_row(cls, row: Any) -> "MicroBatch":
        partition, offsets, payloads, oldest = row[0], row[1], row[2], row[3]
        if len(offsets) != len(payloads):
            raise RuntimeError(f"micro-batch of partition {partition}: {len(offsets)} offsets for {len(payloads)} payloads")
        records = sorted(zip(offsets, (bytes(p) for p in payloads)), key=lambda r: r[0])
        return cls(partition, records, None if oldest is None else oldest.to_epoch_milli())

    @property
    def last_offset(self) -> int | None:
        return self.records[-1][0] if self.records else None


@dataclass
class ReadBatch:
    rows: list[LakeRow]  # every valid record, late ones included (flagged)
    on_time: list[Event]  # the events features take, in offset order

    @property
    def late(self) -> int:
        return len(self.rows) - len(self.on_time)


def read_batch(batch: MicroBatch, lateness: Lateness, max_bytes: int, ingest_ms: int,
               dead_letter: DeadLetter, aliases: Aliases | None = None) -> ReadBatch:
    """Decode (a log's own event names through ``aliases``), dead-letter and flag one micro-batch.

    >>> import orjson
    >>> ok = {"event_id": "e1", "user_id": "u", "item_id": "i", "event_type": "click", "event_time": 10_000}
    >>> old = {**ok, "event_id": "e0", "event_time": 1}
    >>> batch = MicroBatch(0, [(5, orjson.dumps(ok)), (6, b"not json"), (7, orjson.dumps(old))], None)
    >>> letters = []
    >>> read = read_batch(batch, Lateness(slack_ms=100), 10_000, 0, lambda *a: letters.append(a[3]))
    >>> [(r.event_id, r.kafka_offset, r.late) for r in read.rows], [e.event_id for e in read.on_time], letters
    ([('e1', 5, False), ('e0', 7, True)], ['e1'], ['bad_json'])
    """
    partition = batch.partition
    rows: list[LakeRow] = []
    on_time: list[Event] = []
    for offset, payload in batch.records:
        try:
            e = decode_event(payload, max_bytes, aliases)
        except InvalidEvent as exc:
            dead_letter(payload, partition, offset, exc.reason, exc.detail)
            continue
        is_late = lateness.observe(partition, e.event_time)
        context = None if e.context is None else _json(e.context)
        rows.append(LakeRow.of(e, partition, offset, is_late, ingest_ms, context))
        if not is_late:
            on_time.append(e)
    return ReadBatch(rows, on_time)


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()


__all__ = ["MicroBatch", "ReadBatch", "read_batch"]
