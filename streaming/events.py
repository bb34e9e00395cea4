"""The event contract (schema version 1) and its JSON wire format.

An event is one user interaction. The wire format is UTF-8 JSON of :class:`Event`; the Kafka
key is ``user_id`` so one user's events stay ordered in one partition.

>>> e = Event(event_id="e1", user_id=7, item_id="42", event_type="rating", value=4, event_time=1)
>>> e.user_id, e.value
('7', 4.0)
>>> decode_event(encode_event(e)) == e
True
>>> decode_event(b'{"event_id": "x"}')
Traceback (most recent call last):
...
streaming.events.InvalidEvent: missing_field: user_id: Field required; item_id: Field required; event_type: Field required; event_time: Field required
"""

from __future__ import annotations

from enum import StrEnum

import orjson
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
DAY_MS = 86_400_000  # event times are epoch milliseconds (UTC); the one spelling of a day
MAX_EVENT_TIME_MS = 4_102_444_800_000  # 2100-01-01: anything later is a unit mistake (us/ns)


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    LIKE = "like"
    SHARE = "share"


TYPE_NAMES = tuple(t.value for t in EventType)
Aliases = dict[str, str]  # a log's event names -> EventType values (``streaming.vocabulary`` builds it from the settings)


def _int_id_to_str(value: Any) -> Any:
    """Backends often hold integer ids; accept them, but never bools or floats."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


EntityId = Annotated[
    str, BeforeValidator(_int_id_to_str), Field(min_length=1, max_length=128, strict=True)
]


class Event(BaseModel):
    """One interaction. Frozen: an event is a fact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Annotated[str, Field(min_length=1, max_length=128, strict=True)]
    user_id: EntityId
    item_id: EntityId
    event_type: EventType
    value: float | None = None
    event_time: Annotated[StrictInt, Field(ge=0, le=MAX_EVENT_TIME_MS)]
    context: dict[str, str] | None = None

    @field_validator("event_type", mode="before")
    @classmethod
    def _known_type(cls, value: Any, info: ValidationInfo) -> Any:
        """A log's own name is mapped through the aliases in the validation context; an unknown
        name is rejected with the accepted ones and how to map it."""
        if not isinstance(value, str) or value in TYPE_NAMES:
            return value
        aliases: Aliases = (info.context or {}).get("aliases") or {}
        if value in aliases:
            return aliases[value]
        accepted = ", ".join(repr(t) for t in (*TYPE_NAMES, *aliases))
        raise PydanticCustomError(
            "unknown_event_type",
            "{quoted} is not an event type (accepted: {accepted}); map it with --event-types {name}=<type> "
            "or the events.aliases setting",
            {"quoted": repr(value[:64]), "name": value[:64], "accepted": accepted},
        )

    @model_validator(mode="after")
    def _rating_has_value(self) -> "Event":
        if self.event_type is EventType.RATING and self.value is None:
            raise ValueError("rating events need a numeric value")
        return self

    @property
    def key(self) -> bytes:
        return self.user_id.encode()


class InvalidEvent(ValueError):
    """Raised for bytes or objects that are not a valid event; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_ERROR_REASONS = {
    "json_invalid": "bad_json",
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "enum": "unknown_event_type",
    "unknown_event_type": "unknown_event_type",
    "literal_error": "unsupported_schema_version",
}


def _reason_from(error: ValidationError) -> InvalidEvent:
    first = error.errors(include_url=False)
    codes = {e["type"] for e in first}
    reason = next((_ERROR_REASONS[c] for c in _ERROR_REASONS if c in codes), None)
    if reason is None:
        reason = "wrong_type" if any(c.endswith("_type") or "parsing" in c for c in codes) else "invalid_value"
    if reason != "bad_json" and any(
        e["type"] == "model_type" or (e["type"] == "json_type") for e in first
    ):
        reason = "not_an_object"
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in first
    )
    return InvalidEvent(reason, detail)


def decode_event(data: bytes, max_bytes: int | None = None, aliases: Aliases | None = None) -> Event:
    """Parse and validate wire bytes; raises :class:`InvalidEvent` with a reason code. ``aliases``:
    the log's own event names (``streaming.vocabulary``); the event carries the engine's type."""
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidEvent("oversize", f"{len(data)} bytes > limit {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", str(exc)) from None
    try:
        return Event.model_validate_json(text, context=_context(aliases))
    except ValidationError as exc:
        raise _reason_from(exc) from None


def _context(aliases: Aliases | None) -> dict[str, Aliases] | None:
    return {"aliases": aliases} if aliases else None


def coerce_event(obj: Event | dict[str, Any] | bytes | str, aliases: Aliases | None = None) -> Event:
    """Accept what a producer may hand us (model, dict, JSON bytes/str) as a valid Event.

    >>> coerce_event({"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "pv", "event_time": 1},
    ...              aliases={"pv": "view"}).event_type
    <EventType.VIEW: 'view'>
    """
    if isinstance(obj, Event):
        return obj
    if isinstance(obj, (bytes, bytearray)):
        return decode_event(bytes(obj), aliases=aliases)
    if isinstance(obj, str):
        return decode_event(obj.encode("utf-8", errors="surrogatepass"), aliases=aliases)
    if isinstance(obj, dict):
        try:
            return Event.model_validate(obj, context=_context(aliases))
        except ValidationError as exc:
            raise _reason_from(exc) from None
    raise InvalidEvent("not_an_object", f"cannot make an event from {type(obj).__name__}")


_serializer = Event.__pydantic_serializer__


def encode_event(event: Event) -> bytes:
    """Compact UTF-8 JSON bytes for the wire (absent ``value``/``context`` are left out)."""
    return _serializer.to_json(event, exclude_none=True)


def validate_and_encode(obj: Event | dict[str, Any] | bytes | str, aliases: Aliases | None = None) -> tuple[Event, bytes]:
    """The producer's hot path: a valid event and its wire bytes (which carry the engine's type
    name, never an alias, so every reader of the topic agrees).

    A dict with string ids (what backends usually send) is serialised once with orjson and
    validated from those bytes, which is cheaper than building the model and re-serialising;
    everything else takes the canonical path.
    """
    if type(obj) is dict and type(obj.get("user_id")) is str and type(obj.get("item_id")) is str:
        if aliases and obj.get("event_type") in aliases:
            obj = {**obj, "event_type": aliases[obj["event_type"]]}
        try:
            payload = orjson.dumps(obj)
        except TypeError:
            pass  # not JSON-serialisable: the canonical path gives the precise reason
        else:
            return decode_event(payload, aliases=aliases), payload
    event = coerce_event(obj, aliases)
    return event, encode_event(event)


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the wire format, for producers in other languages."""
    return Event.model_json_schema()
