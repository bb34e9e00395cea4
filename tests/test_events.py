"""The event contract: what is valid, and the reason code for each kind of invalid input."""

import json

import pytest

from streaming.events import Event, InvalidEvent, coerce_event, decode_event, encode_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "event_time": 1_700_000_000_000}


def test_round_trip_preserves_every_field() -> None:
    e = Event(**GOOD, value=2.5, context={"page": "home"})
    assert decode_event(encode_event(e)) == e


def test_integer_ids_become_strings_but_bools_and_floats_do_not() -> None:
    assert coerce_event({**GOOD, "user_id": 7}).user_id == "7"
    for bad in (True, 1.5):
        with pytest.raises(InvalidEvent) as info:
            coerce_event({**GOOD, "user_id": bad})
        assert info.value.reason == "wrong_type"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"event_id": ', "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (b"\xff\xfe\x00", "not_utf8"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode(), "missing_field"),
        (json.dumps({**GOOD, "event_time": "yesterday"}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "event_time": 1.5}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "event_type": "teleport"}).encode(), "unknown_event_type"),
        (json.dumps({**GOOD, "surprise": 1}).encode(), "unknown_field"),
        (json.dumps({**GOOD, "event_time": -1}).encode(), "invalid_value"),
        (json.dumps({**GOOD, "event_time": 1_700_000_000_000_000}).encode(), "invalid_value"),
        (json.dumps({**GOOD, "event_type": "rating"}).encode(), "invalid_value"),
        (json.dumps({**GOOD, "schema_version": 2}).encode(), "unsupported_schema_version"),
    ],
)
def test_each_invalid_input_has_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload)
    assert info.value.reason == reason
    assert info.value.detail


def test_oversize_is_rejected_before_parsing() -> None:
    payload = json.dumps({**GOOD, "context": {"pad": "x" * 100}}).encode()
    assert decode_event(payload).event_id == "e1"
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload, max_bytes=50)
    assert info.value.reason == "oversize"


def test_events_are_immutable() -> None:
    e = coerce_event(GOOD)
    with pytest.raises(Exception):
        e.user_id = "other"  # type: ignore[misc]


def test_fast_path_and_canonical_path_agree() -> None:
    from streaming.events import validate_and_encode

    for obj in (GOOD, {**GOOD, "user_id": 7}, {**GOOD, "value": 1, "context": {"a": "b"}}, coerce_event(GOOD)):
        event, payload = validate_and_encode(obj)
        assert decode_event(payload) == event == coerce_event(obj)
    for bad, reason in (({**GOOD, "event_type": "zap"}, "unknown_event_type"), ({**GOOD, "event_time": object()}, "wrong_type")):
        with pytest.raises(InvalidEvent) as info:
            validate_and_encode(bad)
        assert info.value.reason == reason
