"""Topic administration and inspection over the plain Kafka protocol."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from infra.settings import Settings


class BrokerUnavailable(ConnectionError):
    """The Kafka broker cannot be reached; the message says how to fix it."""


def broker_hint(settings: Settings) -> str:
    return (
        f"cannot reach the Kafka broker at {settings.broker.bootstrap}: start the local stack with "
        "`recsys up`, or set RECSYS_BROKER__BOOTSTRAP_SERVERS to your Kafka cluster"
    )


def admin_client(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.broker.bootstrap,
            client_id=f"{settings.broker.client_id}-admin",
            security_protocol=settings.broker.security_protocol,
            request_timeout_ms=10_000,
        )
    except NoBrokersAvailable as exc:
        raise BrokerUnavailable(broker_hint(settings)) from exc


def ensure_topics(settings: Settings) -> list[str]:
    """Create the events and DLQ topics with explicit partition counts; returns those created."""
    t = settings.topics
    wanted = {t.events: t.events_partitions, t.dlq: t.dlq_partitions}
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        created = []
        for name, partitions in wanted.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, t.replication_factor)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def partition_count(settings: Settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap)
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

    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker.bootstrap,
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
