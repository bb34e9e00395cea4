"""Topic inspection over the plain Kafka protocol (creating them: infra.services.ensure_topics)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.errors import KafkaError

from infra import kafka_clients
from infra.settings import Settings


def partition_count(settings: Settings, topic: str) -> int:
    consumer = kafka_clients.consumer(settings, "topics")
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise KafkaError(f"topic {topic!r} does not exist: run `recsys up` to create it")
        return len(parts)
    finally:
        consumer.close()


@dataclass
class TopicScan:
    """What a full read of a topic found."""

    topic: str
    records: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)


def scan_topic(settings: Settings, topic: str, idle_ms: int = 1500, limit_s: float = 300.0, visit=None) -> TopicScan:
    """Read a topic from the beginning to its current end without a consumer group.

    Counting by reading (not by end offsets) is deliberate: Tansu reports the last batch's
    base offset + 1 from ListOffsets, which undercounts. ``visit(record)`` sees each record.
    """
    from streaming.dlq import REASON_HEADER

    consumer = kafka_clients.consumer(
        settings,
        "scan",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        consumer_timeout_ms=idle_ms,
    )
    scan = TopicScan(topic)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + limit_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=20_000)
            if not batch:
                if (time.monotonic() - idle_since) * 1000 >= idle_ms:
                    break
                continue
            idle_since = time.monotonic()
            for tp, records in batch.items():
                scan.records += len(records)
                scan.per_partition[tp.partition] = scan.per_partition.get(tp.partition, 0) + len(records)
                for record in records:
                    for k, v in record.headers or []:
                        if k == REASON_HEADER:
                            scan.reasons[v.decode("utf-8", "replace")] += 1
                    if visit is not None:
                        visit(record)
        return scan
    finally:
        consumer.close()
