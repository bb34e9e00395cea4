"""Producer behaviour when the broker is absent or slow: clear errors, nothing silently lost."""

import pytest

from infra.processes import free_port
from infra.settings import Settings
from streaming.producer import EventProducer, ProducerBackpressure
from infra.kafka_clients import BrokerUnavailable

EVENT = {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view", "event_time": 1}


def test_broker_down_says_how_to_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, broker={"port": free_port()})
    with pytest.raises(BrokerUnavailable, match="recsys up"):
        EventProducer(settings)


def test_full_buffer_raises_with_the_event_instead_of_dropping_it(settings: Settings) -> None:
    tight = settings.model_copy(
        update={"producer": settings.producer.model_copy(update={"max_buffered_events": 1, "max_block_ms": 50, "linger_ms": 1000})}
    )
    producer = EventProducer(tight)
    try:
        assert producer.send(EVENT) is not None  # held by linger for 1 s, unacknowledged
        with pytest.raises(ProducerBackpressure, match="unacknowledged") as info:
            producer.send({**EVENT, "event_id": "e2"})
        assert info.value.event.event_id == "e2"
        report = producer.flush()
        assert report.acked == 1
        assert producer.send({**EVENT, "event_id": "e2"}) is not None  # slot freed by the ack
        assert producer.flush().acked == 2
    finally:
        producer.close()


def test_cached_partitioner_matches_kafka_default() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    from streaming.producer import CachedKeyPartitioner

    cached, default = CachedKeyPartitioner(max_keys=50), DefaultPartitioner()
    for n in (1, 4, 7):
        parts = list(range(n))
        for i in range(300):  # past max_keys: the cache is cleared and refilled
            key = f"user-{i}".encode()
            assert cached(key, parts, parts) == default(key, parts, parts)
