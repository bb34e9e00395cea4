"""Malformed input lands in the DLQ with a reason; valid events all arrive; nothing crashes."""

import json


from infra import kafka_clients
from infra.settings import Settings
from streaming.consumer import EventConsumer
from streaming.dlq import DeadLetter
from streaming.producer import EventProducer
from streaming.topics import scan_topic

VALID = {"event_id": "ok", "user_id": "u1", "item_id": "i1", "event_type": "purchase", "event_time": 5}

MALFORMED = {
    "bad_json": b'{"event_id": "x", ',
    "missing_field": json.dumps({k: v for k, v in VALID.items() if k != "user_id"}).encode(),
    "wrong_type": json.dumps({**VALID, "event_time": "soon"}).encode(),
    "unknown_event_type": json.dumps({**VALID, "event_type": "teleport"}).encode(),
    "oversize": json.dumps({**VALID, "context": {"pad": "x" * 40_000}}).encode(),
    "not_utf8": b'{"event_id": "\xff\xfe"}',
}


def _dead_letters(settings: Settings) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    scan_topic(settings, settings.topics.dlq, visit=lambda r: letters.append(DeadLetter.from_record(r.value, r.key, r.headers)))
    return letters


def test_consumer_dead_letters_malformed_records(settings: Settings) -> None:
    raw = kafka_clients.producer(settings, "test-raw", max_request_size=1 << 20)
    valid_ids = []
    for i, payload in enumerate(MALFORMED.values()):
        raw.send(settings.topics.events, key=b"u1", value=payload)
        good = json.dumps({**VALID, "event_id": f"ok{i}"}).encode()
        raw.send(settings.topics.events, key=b"u1", value=good)
        valid_ids.append(f"ok{i}")
    raw.flush()
    raw.close()

    got = []
    with EventConsumer(settings, group_id="g-dlq") as c:
        for _ in range(40):
            got += c.poll(timeout_ms=500)
            if len(got) >= len(valid_ids):
                break
        c.commit()
        assert c.report.rejected == len(MALFORMED)
    assert [e.event.event_id for e in got] == valid_ids

    letters = _dead_letters(settings)
    assert sorted(l.reason for l in letters) == sorted(MALFORMED)
    by_reason = {l.reason: l for l in letters}
    for reason, payload in MALFORMED.items():
        letter = by_reason[reason]
        assert letter.value == payload  # the original bytes, untouched
        assert letter.stage == "consume"
        assert letter.source.startswith(settings.topics.events + "/")
        assert letter.time_ms > 0 and letter.detail


def test_producer_dead_letters_invalid_events_and_sends_the_rest(settings: Settings) -> None:
    inputs = list(MALFORMED.values()) + [dict(VALID, event_id=f"v{i}") for i in range(20)]
    with EventProducer(settings) as p:
        accepted = p.send_many(inputs)
        report = p.flush()
    assert accepted == 20
    assert report.rejected == len(MALFORMED) and report.dlq_acked == len(MALFORMED)
    assert report.acked == 20
    assert scan_topic(settings, settings.topics.events).records == 20
    letters = _dead_letters(settings)
    assert sorted(l.reason for l in letters) == sorted(MALFORMED)
    assert all(l.stage == "produce" for l in letters)


def test_strict_producer_raises_after_dead_lettering(settings: Settings) -> None:
    import pytest

    from streaming.events import InvalidEvent

    with EventProducer(settings, strict=True) as p:
        with pytest.raises(InvalidEvent, match="unknown_event_type"):
            p.send({**VALID, "event_type": "teleport"})
    assert scan_topic(settings, settings.topics.dlq).records == 1
