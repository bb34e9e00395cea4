"""Produce/consume round trip on the real broker, with consumer groups and committed offsets."""

from infra.settings import Settings
from streaming.consumer import EventConsumer
from streaming.producer import EventProducer


def _events(n: int, start: int = 0) -> list[dict]:
    return [
        {"event_id": f"e{i}", "user_id": f"u{i % 13}", "item_id": f"i{i % 7}", "event_type": "view", "event_time": 1_000 + i}
        for i in range(start, start + n)
    ]


def _drain(consumer: EventConsumer, want: int, max_polls: int = 60) -> list:
    got: list = []
    for _ in range(max_polls):
        got += consumer.poll(timeout_ms=500)
        if len(got) >= want:
            break
    return got


def test_round_trip_with_committed_offsets(settings: Settings) -> None:
    delivered = []
    with EventProducer(settings, on_delivery=lambda e, md: delivered.append((e.event_id, md.partition))) as p:
        assert p.send_many(_events(300)) == 300
        report = p.flush()
    assert report.acked == 300 and not report.failed and report.rejected == 0
    assert len(delivered) == 300
    # partition by user: every event of a user is in one partition
    by_user: dict[str, set[int]] = {}
    for eid, part in delivered:
        by_user.setdefault(f"u{int(eid[1:]) % 13}", set()).add(part)
    assert all(len(parts) == 1 for parts in by_user.values())

    with EventConsumer(settings, group_id="g-roundtrip") as c:
        first = _drain(c, 300)
        c.commit()
        committed = c.committed()
    assert sorted(e.event.event_id for e in first) == sorted(f"e{i}" for i in range(300))
    assert sum(v or 0 for v in committed.values()) == 300

    with EventProducer(settings) as p:
        p.send_many(_events(50, start=300))
    with EventConsumer(settings, group_id="g-roundtrip") as c:
        second = _drain(c, 50)
        extra = c.poll(timeout_ms=1000)
    assert sorted(e.event.event_id for e in second) == sorted(f"e{i}" for i in range(300, 350))
    assert extra == []

    # another group reads everything from the start, independently
    with EventConsumer(settings, group_id="g-other") as c:
        assert len(_drain(c, 350)) == 350


def test_per_partition_order_is_send_order(settings: Settings) -> None:
    with EventProducer(settings) as p:
        p.send_many(_events(500))
    with EventConsumer(settings, group_id="g-order") as c:
        got = _drain(c, 500)
    per_user: dict[str, list[int]] = {}
    for ce in got:
        per_user.setdefault(ce.event.user_id, []).append(ce.event.event_time)
    assert sum(len(v) for v in per_user.values()) == 500
    assert all(times == sorted(times) for times in per_user.values())
