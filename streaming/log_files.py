"""Rows of an interaction log in the layouts people have, as ``(row number, {field: text})``.

- MovieLens ``u.data`` (no mapping): tab-separated ``user_id item_id rating unix_seconds``;
- delimited text with a header: ``columns`` maps event fields to header names
  (``user_id=userId,item_id=movieId``);
- headerless delimited text: ``columns`` maps event fields to 0-based positions
  (``user_id=0,item_id=1,event_type=3,event_time=4``, the common e-commerce behaviour layout);
- JSON lines (``.jsonl``/``.ndjson``/``.json``) and Parquet (``.parquet``): ``columns`` maps
  fields to keys/columns, or the file already uses the event field names;
- any of the text forms gzip-compressed (``.gz``).

A row that cannot be split (wrong column count, bad JSON) comes back as its raw text, so the
caller can dead-letter it with the reason instead of dropping it. Files are read as a stream:
the reader holds one row (one Parquet batch) at a time. ``progress`` shows bytes read with an ETA.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "behaviour.csv"
>>> _ = path.write_text("1,10,7,pv,1511544070\\n1,11,7,buy,1511544071\\n")
>>> [row for _, row in read_rows(path, {"user_id": "0", "item_id": "1", "event_type": "3", "event_time": "4"})]
[{'user_id': '1', 'item_id': '10', 'event_type': 'pv', 'event_time': '1511544070'}, {'user_id': '1', 'item_id': '11', 'event_type': 'buy', 'event_time': '1511544071'}]
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import IO, Iterator

from tqdm import tqdm

ML_COLUMNS = ("user_id", "item_id", "value", "event_time")
EVENT_FIELDS = ("user_id", "item_id", "value", "event_time", "event_type")
JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}
Row = tuple[int, "dict[str, str] | str"]


def layout(path: Path) -> str:
    """``parquet``, ``jsonl`` or ``text`` from the file name (``.gz`` looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet":
        return "parquet"
    return "jsonl" if last in JSON_SUFFIXES else "text"


def by_position(columns: dict[str, str] | None) -> bool:
    """A mapping to column numbers means the file has no header."""
    return bool(columns) and all(c.isdigit() for c in columns.values())


def read_rows(path: Path, columns: dict[str, str] | None = None, delimiter: str | None = None,
              progress: bool = False) -> Iterator[Row]:
    kind = layout(path)
    if kind == "parquet":
        yield from _parquet_rows(path, columns, progress)
        return
    with _TextSource(path, progress) as fh:
        if kind == "jsonl":
            yield from _json_rows(fh, columns)
        elif columns is None:
            yield from _ml_rows(fh, delimiter)
        elif by_position(columns):
            yield from _positional_rows(fh, columns, delimiter)
        else:
            yield from _header_rows(path, fh, columns, delimiter)


class _TextSource:
    """The file as text (gunzipped when it ends in .gz), with a progress bar over its bytes."""

    def __init__(self, path: Path, progress: bool) -> None:
        self.raw = path.open("rb")
        self.bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}",
                        disable=None if progress else True)
        binary: IO[bytes] = gzip.GzipFile(fileobj=self.raw) if path.suffix.lower() == ".gz" else self.raw
        self.text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")
        self._shown = 0

    def __enter__(self) -> "_TextSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.text.close()
        self.raw.close()
        self.bar.close()

    def __iter__(self) -> Iterator[str]:
        for n, line in enumerate(self.text):
            if n % 20_000 == 0:
                self._tick()
            yield line
        self._tick()

    def _tick(self) -> None:
        done = self.raw.tell()
        self.bar.update(done - self._shown)
        self._shown = done


def _ml_rows(fh: _TextSource, delimiter: str | None) -> Iterator[Row]:
    for n, line in enumerate(fh, start=1):
        parts = line.rstrip("\r\n").split(delimiter or "\t")
        if len(parts) == len(ML_COLUMNS):
            yield n, dict(zip(ML_COLUMNS, parts))
        elif line.strip():
            yield n, line.rstrip("\r\n")


def _positional_rows(fh: _TextSource, columns: dict[str, str], delimiter: str | None) -> Iterator[Row]:
    positions = {field: int(c) for field, c in columns.items()}
    need = max(positions.values()) + 1
    for n, parts in enumerate(csv.reader(fh, delimiter=delimiter or ","), start=1):
        if len(parts) >= need:
            yield n, {field: parts[i] for field, i in positions.items()}
        elif parts:
            yield n, (delimiter or ",").join(parts)


def _header_rows(path: Path, fh: _TextSource, columns: dict[str, str], delimiter: str | None) -> Iterator[Row]:
    reader = csv.DictReader(fh, delimiter=delimiter or ",")
    missing = [c for c in columns.values() if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(
            f"{path}: header has no column(s) {missing}; header is {reader.fieldnames}. Fix the --columns "
            "mapping (field=header_name,...), or give column numbers (user_id=0,...) for a file without a header"
        )
    for row in reader:
        yield reader.line_num, {field: row.get(col) or "" for field, col in columns.items()}


def _json_rows(fh: _TextSource, columns: dict[str, str] | None) -> Iterator[Row]:
    keys = columns or {f: f for f in EVENT_FIELDS}
    for n, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            yield n, line.rstrip("\r\n")
            continue
        yield n, {field: _text(obj.get(key)) for field, key in keys.items() if key in obj}


def _parquet_rows(path: Path, columns: dict[str, str] | None, progress: bool) -> Iterator[Row]:
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    keys = columns or {f: f for f in EVENT_FIELDS if f in source.schema_arrow.names}
    missing = [c for c in keys.values() if c not in source.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; columns are {source.schema_arrow.names}. "
                         "Fix the --columns mapping (field=column,...)")
    n = 0
    with tqdm(total=source.metadata.num_rows, unit="row", desc=f"reading {path.name}",
              disable=None if progress else True) as bar:
        for batch in source.iter_batches(columns=sorted(set(keys.values())), batch_size=65_536):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                n += 1
                yield n, {field: _text(data[key][i]) for field, key in keys.items()}
            bar.update(batch.num_rows)


def _text(value: object) -> str:
    """A JSON/Parquet value as the text a delimited file would hold ('' for missing)."""
    if value is None:
        return ""
    if hasattr(value, "isoformat"):  # a Parquet timestamp column: ISO text, read as UTC when naive
        return value.isoformat()
    return str(value)
