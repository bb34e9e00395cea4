"""Replay interaction files into the events topic in event-time order.

Layouts (``streaming.log_files``): MovieLens ``u.data`` (each row a ``rating`` event with
``value`` = rating), delimited text with a header or by column position, JSON lines, Parquet,
gzip. ``columns`` maps event fields to header names or positions, e.g.
``{"user_id": "userId", "item_id": "movieId", "value": "rating", "event_time": "timestamp"}``;
``event_type`` comes from a mapped column or the ``event_type`` argument; a log's own names
(``pv``, ``buy``) map onto the engine's types through ``aliases`` (``--event-types pv=view``).
Times are epoch numbers in ``time_unit`` (guessed from their size by default) or ISO-8601 text.

Rows that cannot become events (wrong column count, non-numeric time, ...) are not dropped:
they go through the producer's validation and land in the DLQ with the reason.
Event ids are ``<file name>:<line number>``, so replaying a file twice yields the same ids and
downstream sinks can de-duplicate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from streaming.events import Aliases, Event, InvalidEvent, coerce_event
from streaming.log_files import EVENT_FIELDS, ML_COLUMNS, by_position, read_rows
from streaming.ordering import TimeOrder

TIME_UNITS = {"s": 1000, "ms": 1, "us": 0.001, "ns": 0.000001}


@dataclass
class LoadedEvents:
    """Events sorted by event time plus the raw rows that failed to become events."""

    events: list[Event] | TimeOrder  # TimeOrder: ordered under a memory bound (see load_events)
    rejected: list[tuple[Any, InvalidEvent]] = field(default_factory=list)
    time_unit: str | None = None  # the unit the times were read in (and how it was chosen)

    def close(self) -> None:
        """Remove what ordering spilled to disk (nothing for an in-memory list)."""
        if isinstance(self.events, TimeOrder):
            self.events.close()

    def __enter__(self) -> "LoadedEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rejection_summary(self, examples: int = 3) -> str:
        """The bad rows counted by reason, each with the values that caused it and what is accepted.

        >>> bad = [({"event_type": t}, InvalidEvent("unknown_event_type", "event_type: Input should be 'view' or 'click'"))
        ...        for t in ["pv", "pv", "fav"]]
        >>> LoadedEvents([], bad).rejection_summary()
        "3 bad rows: 3 unknown_event_type (event_type 'pv' x2, 'fav'; event_type: Input should be 'view' or 'click')"
        """
        if not self.rejected:
            return "no bad rows"
        by_reason: dict[str, list[tuple[Any, InvalidEvent]]] = {}
        for row, exc in self.rejected:
            by_reason.setdefault(exc.reason, []).append((row, exc))
        parts = []
        for reason, rows in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            detail = rows[0][1].detail
            field_name = detail.split(":", 1)[0].strip()
            values = Counter(repr(row[field_name]) for row, _ in rows if isinstance(row, dict) and field_name in row)
            shown = ", ".join(f"{v} x{n}" if n > 1 else v for v, n in values.most_common(examples))
            more = ", ..." if len(values) > examples else ""
            about = f"{field_name} {shown}{more}; {detail}" if values else detail
            parts.append(f"{len(rows):,} {reason} ({about})")
        return f"{len(self.rejected):,} bad rows: " + "; ".join(parts)


def guess_time_unit(raw: str) -> str | None:
    """The unit of an epoch time from its size (None: not a number). Epoch seconds stay below 1e11
    until the year 5138, and milliseconds are above it after March 1973, so the size decides.

    >>> [guess_time_unit(v) for v in ["874965758", "1511544070000", "1511544070000000", "2017-11-24", ""]]
    ['s', 'ms', 'us', None, None]
    """
    try:
        value = abs(float(raw))
    except ValueError:
        return None
    if value != value:  # NaN
        return None
    return "s" if value < 1e11 else "ms" if value < 1e14 else "us" if value < 1e17 else "ns"


def _to_time_ms(raw: str, unit: str) -> int | str:
    """Epoch time in ``unit`` -> ms; ISO-8601 text (naive = UTC) also works."""
    try:
        return int(round(float(raw) * TIME_UNITS[unit]))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return raw  # left as text: validation rejects it with a clear reason
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1000))


def _row_to_event(fields: dict[str, str], event_id: str, event_type: str, unit: str) -> Any:
    value = fields.get("value")
    candidate: dict[str, Any] = {
        "event_id": event_id,
        "user_id": fields.get("user_id"),
        "item_id": fields.get("item_id"),
        "event_type": fields.get("event_type") or event_type,
        "event_time": _to_time_ms(fields.get("event_time", ""), unit),
    }
    if value not in (None, ""):
        try:
            candidate["value"] = float(value)
        except ValueError:
            candidate["value"] = value
    return candidate


def load_events(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    delimiter: str | None = None,
    event_type: str = "rating",
    time_unit: str = "auto",
    aliases: Aliases | None = None,
    progress: bool = False,
    max_in_memory: int | None = None,
    spill_dir: Path | None = None,
) -> LoadedEvents:
    """Read a log (any layout of ``streaming.log_files``) into validated events, sorted by event
    time (ties keep file order); the log's own event names are mapped through ``aliases``
    (``streaming.vocabulary``). ``time_unit="auto"`` guesses it from the first numeric time and
    says so in :attr:`LoadedEvents.time_unit`.

    ``max_in_memory=None`` gives a sorted list. A number bounds what ordering holds: ``events``
    is then a :class:`streaming.ordering.TimeOrder` (iterable once, with ``len``) that sorts a
    larger file in runs under ``spill_dir`` and merges them; close the result to remove them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass the path to u.data (e.g. ../shared/data/ml-100k/u.data), a CSV/TSV, "
            "JSON lines or Parquet file"
        )
    if time_unit != "auto" and time_unit not in TIME_UNITS:
        raise ValueError(f"time unit {time_unit!r} unknown: use auto or one of {sorted(TIME_UNITS)}")
    loaded = LoadedEvents(events=[])
    events = _file_events(path, columns, delimiter, event_type, time_unit, aliases, progress, loaded)
    if max_in_memory is None:
        loaded.events = sorted(events, key=lambda e: e.event_time)
    else:
        order = TimeOrder(max_in_memory, spill_dir)
        try:
            order.add_all(events)
        except BaseException:
            order.close()
            raise
        loaded.events = order
    return loaded


def _file_events(path: Path, columns: dict[str, str] | None, delimiter: str | None, event_type: str,
                 time_unit: str, aliases: Aliases | None, progress: bool, loaded: LoadedEvents) -> Iterator[Event]:
    """The file's valid events in file order; bad rows and the time unit are recorded in ``loaded``."""
    unit = None if time_unit == "auto" else time_unit
    for line_no, row in read_rows(path, columns, delimiter, progress):
        event_id = f"{path.name}:{line_no}"
        if isinstance(row, str):
            expected = f"{len(ML_COLUMNS)} columns" if columns is None else "the mapped columns"
            loaded.rejected.append((row, InvalidEvent("bad_row", f"{event_id}: expected {expected}")))
            continue
        if unit is None:
            unit = guess_time_unit(row.get("event_time", ""))
            if unit is not None:
                loaded.time_unit = f"{unit} (guessed from {row['event_time']})"
        candidate = _row_to_event(row, event_id, event_type, unit or "s")
        try:
            yield coerce_event(candidate, aliases)
        except InvalidEvent as exc:
            loaded.rejected.append((candidate, exc))
    if loaded.time_unit is None and unit is not None:
        loaded.time_unit = unit


def parse_columns(spec: str | None, required: tuple[str, ...] = ("user_id", "item_id", "event_time"),
                  fields: tuple[str, ...] | None = EVENT_FIELDS) -> dict[str, str] | None:
    """``"user_id=userId,item_id=movieId"`` (header names) or ``"user_id=0,item_id=1"`` (column
    numbers of a file without a header) -> mapping; None means the u.data format. ``fields``: the
    names allowed (None: any, e.g. a catalogue's own columns)."""
    if not spec:
        return None
    mapping = {}
    for part in spec.split(","):
        field_name, sep, column = part.partition("=")
        if not sep or not field_name.strip() or not column.strip():
            raise ValueError(f"bad column mapping {part!r}: write field=header_name, comma separated")
        mapping[field_name.strip()] = column.strip()
    unknown = set(mapping) - set(fields) if fields is not None else set()
    if unknown:
        raise ValueError(f"unknown event field(s) {sorted(unknown)} in --columns; the fields are {', '.join(fields)}")
    if not by_position(mapping) and any(c.isdigit() for c in mapping.values()):
        raise ValueError("--columns mixes header names and column numbers: use names for a file with a header, "
                         "numbers (0-based) for one without")
    for name in required:
        if name not in mapping:
            raise ValueError(f"--columns must map {name}")
    return mapping
