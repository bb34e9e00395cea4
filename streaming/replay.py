"""Replay interaction files into the events topic in event-time order.

Formats:
- MovieLens ``u.data``: tab-separated ``user_id item_id rating unix_seconds``, no header;
  each row becomes a ``rating`` event with ``value`` = rating.
- CSV with a header: ``columns`` maps event fields to header names, e.g.
  ``{"user_id": "userId", "item_id": "movieId", "value": "rating", "event_time": "timestamp"}``;
  ``event_type`` comes from a mapped column or the ``event_type`` argument; a log's own names
  (``pv``, ``buy``) map onto the engine's types through ``aliases`` (``--event-types pv=view``).

Rows that cannot become events (wrong column count, non-numeric time, ...) are not dropped:
they go through the producer's validation and land in the DLQ with the reason.
Event ids are ``<file name>:<line number>``, so replaying a file twice yields the same ids and
downstream sinks can de-duplicate.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from streaming.events import Aliases, Event, InvalidEvent, coerce_event

ML_COLUMNS = ("user_id", "item_id", "value", "event_time")
TIME_UNITS = {"s": 1000, "ms": 1, "us": 0.001}


@dataclass
class LoadedEvents:
    """Events sorted by event time plus the raw rows that failed to become events."""

    events: list[Event]
    rejected: list[tuple[Any, InvalidEvent]] = field(default_factory=list)

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


def _to_time_ms(raw: str, unit: str) -> int | str:
    try:
        return int(round(float(raw) * TIME_UNITS[unit]))
    except ValueError:
        return raw  # left as text: validation rejects it with a clear reason


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


def _rows(path: Path, columns: dict[str, str] | None, delimiter: str | None) -> Iterable[tuple[int, dict[str, str] | str]]:
    """Yield (line number, field dict) or (line number, raw line) for unparseable rows."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        if columns is None:
            for n, line in enumerate(fh, start=1):
                parts = line.rstrip("\r\n").split(delimiter or "\t")
                if len(parts) == len(ML_COLUMNS):
                    yield n, dict(zip(ML_COLUMNS, parts))
                elif line.strip():
                    yield n, line.rstrip("\r\n")
            return
        reader = csv.DictReader(fh, delimiter=delimiter or ",")
        missing = [c for c in columns.values() if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: header has no column(s) {missing}; header is {reader.fieldnames}. "
                "Fix the --columns mapping (field=header_name,...)"
            )
        for row in reader:
            yield reader.line_num, {field: row.get(col) or "" for field, col in columns.items()}


def load_events(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    delimiter: str | None = None,
    event_type: str = "rating",
    time_unit: str = "s",
    aliases: Aliases | None = None,
) -> LoadedEvents:
    """Read a file into validated events, sorted by event time (ties keep file order); the file's
    own event names are mapped through ``aliases`` (``streaming.vocabulary``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass the path to u.data (e.g. ../shared/data/ml-100k/u.data) or a CSV"
        )
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time unit {time_unit!r} unknown: use one of {sorted(TIME_UNITS)}")
    loaded = LoadedEvents(events=[])
    for line_no, row in _rows(path, columns, delimiter):
        event_id = f"{path.name}:{line_no}"
        if isinstance(row, str):
            loaded.rejected.append(
                (row, InvalidEvent("bad_row", f"{event_id}: expected {len(ML_COLUMNS)} columns"))
            )
            continue
        candidate = _row_to_event(row, event_id, event_type, time_unit)
        try:
            loaded.events.append(coerce_event(candidate, aliases))
        except InvalidEvent as exc:
            loaded.rejected.append((candidate, exc))
    loaded.events.sort(key=lambda e: e.event_time)
    return loaded


def parse_columns(spec: str | None) -> dict[str, str] | None:
    """``"user_id=userId,item_id=movieId"`` -> mapping; None means the u.data format."""
    if not spec:
        return None
    mapping = {}
    for part in spec.split(","):
        field_name, sep, column = part.partition("=")
        if not sep or not field_name.strip() or not column.strip():
            raise ValueError(f"bad column mapping {part!r}: write field=header_name, comma separated")
        mapping[field_name.strip()] = column.strip()
    unknown = set(mapping) - {"user_id", "item_id", "value", "event_time", "event_type"}
    if unknown:
        raise ValueError(f"unknown event field(s) {sorted(unknown)} in --columns")
    for required in ("user_id", "item_id", "event_time"):
        if required not in mapping:
            raise ValueError(f"--columns must map {required}")
    return mapping
