"""The lakehouse sink: every valid event appended once to the Delta table ``events``.

Each append covers records of one Kafka partition in offset order and is committed with a Delta
application transaction ``(app_id = job:topic:epoch:partition, version = last offset)``. A
writer first reads that version and drops records at or below it, so when the job restarts
from a checkpoint and replays records it already landed, nothing is written twice. (PyFlink
gives Python functions no checkpoint-complete hook; partition offsets are the deterministic,
monotonically increasing batch ids that the job-id + checkpoint-id scheme stands for.)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from infra.settings import Settings
from streaming.events import DAY_MS

if TYPE_CHECKING:
    from streaming.events import Event

class LakeRow(NamedTuple):
    """One row of the ``events`` table as a writer hands it over (the LakeWriter adds
    ``topic_epoch`` and ``event_date``). Rows restored from an older checkpoint are plain tuples
    in this order, so code reads a field by position (``KAFKA_OFFSET``, ``EVENT_TIME``)."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    value: float
    event_time: int  # ms since epoch, event time
    context: str | None  # JSON object or null
    kafka_partition: int
    kafka_offset: int
    late: bool  # beyond the allowed lateness: in the lake, in no streaming feature
    ingest_time: int  # ms, when the job read it

    @classmethod
    def of(cls, e: "Event", partition: int, offset: int, late: bool = False, ingest_time: int = 0,
           context: str | None = None) -> "LakeRow":
        return cls(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time, context, partition,
                   offset, late, ingest_time)


EVENT_TIME = LakeRow._fields.index("event_time")
KAFKA_OFFSET = LakeRow._fields.index("kafka_offset")
_ROW_TYPES = (pa.string(), pa.string(), pa.string(), pa.string(), pa.float64(), pa.int64(), pa.string(), pa.int32(),
              pa.int64(), pa.bool_(), pa.int64())  # LakeRow's fields, in order
EVENTS_SCHEMA = pa.schema([
    *zip(LakeRow._fields, _ROW_TYPES, strict=True),
    ("topic_epoch", pa.string()),  # the topic incarnation the offsets belong to (written by LakeWriter)
    ("event_date", pa.string()),  # partition column, UTC date of event_time
])
PARTITION_BY = ["event_date"]


class ImpressionRow(NamedTuple):
    """One shown item of a served list, as the attribution job lands it in the ``impressions``
    table (the LakeWriter adds ``topic_epoch`` and ``event_date``, the UTC date of ``shown_at``)."""

    request_id: str
    user_id: str
    model_version: str
    arm: str  # streaming.live_attribution.NO_ARM outside any experiment
    served_at_ms: int  # wall clock
    shown_at: int  # ms, the stream's event clock when served (wall clock when unknown): what attribution uses
    item_id: str
    position: int
    score: float
    sources: list[str]
    kafka_partition: int
    kafka_offset: int

    @classmethod
    def of_record(cls, record: dict, shown_at: int, arm: str, partition: int, offset: int) -> list["ImpressionRow"]:
        return [cls(record["request_id"], record["user_id"], record["model_version"], arm, int(record["served_at_ms"]),
                    shown_at, i["item_id"], int(i["position"]), float(i.get("score", 0.0)), list(i["sources"]),
                    partition, offset) for i in record["items"]]


IMPRESSIONS_SCHEMA = pa.schema([
    *zip(ImpressionRow._fields, (pa.string(), pa.string(), pa.string(), pa.string(), pa.int64(), pa.int64(), pa.string(),
                                 pa.int32(), pa.float64(), pa.list_(pa.string()), pa.int32(), pa.int64()), strict=True),
    ("topic_epoch", pa.string()),
    ("event_date", pa.string()),
])


def append_events(settings: Settings, events: Sequence["Event"], first_offset: int = 0) -> int:
    """Write events straight into the lake, as partition 0 from ``first_offset`` on (imports, tests and
    benchmarks that skip the topic; the stream job writes its own rows)."""
    return LakeWriter.for_settings(settings).append(0, [LakeRow.of(e, 0, first_offset + i) for i, e in enumerate(events)])


def land_topic(settings: Settings) -> int:
    """Every valid record of the events topic into the lake with its Kafka partition and offset, as
    the stream job's lake sink writes them (idempotent: rows already landed are skipped). For
    tests, benchmarks and one-off imports without a running job; returns rows written."""
    from streaming.events import InvalidEvent, decode_event
    from streaming.topics import scan_topic
    from streaming.vocabulary import EventVocabulary

    aliases = EventVocabulary.from_settings(settings).aliases

    rows: dict[int, list] = {}

    def visit(r) -> None:  # noqa: ANN001 - a kafka ConsumerRecord
        try:
            e = decode_event(r.value or b"", settings.producer.max_event_bytes, aliases)
        except InvalidEvent:
            return
        rows.setdefault(r.partition, []).append(LakeRow.of(e, r.partition, r.offset, ingest_time=r.timestamp))

    scan_topic(settings, settings.topics.events, visit=visit)
    return LakeWriter.for_settings(settings).append_many(rows)


def topic_epoch(settings: Settings) -> str:
    """The topic incarnation used in transaction ids (see StreamSettings.topic_epoch)."""
    if settings.stream.topic_epoch:
        return settings.stream.topic_epoch
    if settings.broker.managed:
        pid_file = settings.paths.run_dir / "broker.pid"
        if pid_file.exists():
            return f"b{pid_file.stat().st_mtime_ns // 1_000_000}"
    return "kafka"


def event_date(event_time_ms: int) -> str:
    """The UTC date of an event time (the partition of its lake row).

    >>> event_date(0), event_date(86_399_999), event_date(86_400_000)
    ('1970-01-01', '1970-01-01', '1970-01-02')
    """
    return _utc_date(event_time_ms // DAY_MS)


@lru_cache(maxsize=4096)
def _utc_date(day: int) -> str:
    """(Every row needs one, and a batch spans a few days: formatting each was 3% of the job.)"""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def open_table(path: Path, version: int | None = None) -> DeltaTable:
    """The events table (optionally at a pinned version); a clear error if it does not exist yet."""
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError as exc:
        raise FileNotFoundError(
            f"no Delta table at {path}: start the stream job (`recsys stream start`) and send events first"
        ) from exc


@dataclass
class LakeWriter:
    """Appends one partition's records with an idempotent transaction id per partition.

    Each row is tagged with the topic incarnation (``epoch``): Kafka offsets restart at 0 when a
    topic is recreated, so (partition, offset) identifies a record only together with it.
    """

    path: Path
    app_prefix: str
    epoch: str = "kafka"
    schema: pa.Schema = EVENTS_SCHEMA  # its row fields, then topic_epoch and event_date
    time_field: int = EVENT_TIME  # the row field whose UTC date partitions the table
    offset_field: int = KAFKA_OFFSET
    commits: int = 0
    rows: int = 0
    skipped: int = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> "LakeWriter":
        epoch = topic_epoch(settings)
        return cls(settings.paths.events_table, f"{settings.stream.job_name}:{settings.topics.events}:{epoch}", epoch)

    @classmethod
    def for_impressions(cls, settings: Settings) -> "LakeWriter":
        """The attribution job's writer of the ``impressions`` table (one row per shown item)."""
        epoch = topic_epoch(settings)
        return cls(settings.paths.impressions_table, f"{settings.attribution.job_name}:{settings.topics.impressions}:{epoch}",
                   epoch, IMPRESSIONS_SCHEMA, ImpressionRow._fields.index("shown_at"),
                   ImpressionRow._fields.index("kafka_offset"))

    def app_id(self, partition: int) -> str:
        return f"{self.app_prefix}:p{partition}"

    def committed_offset(self, partition: int, table: DeltaTable | None = None) -> int:
        """Last Kafka offset of ``partition`` already in the table (-1 if none)."""
        if table is None:
            table = self._table()
        if table is None:
            return -1
        version = table.transaction_version(self.app_id(partition))
        return -1 if version is None else version

    def _table(self) -> DeltaTable | None:
        try:
            return DeltaTable(str(self.path))
        except TableNotFoundError:
            return None

    def append(self, partition: int, rows: Sequence[LakeRow]) -> int:
        """Append one partition's rows (see :meth:`append_many`)."""
        return self.append_many({partition: rows})

    def append_many(self, rows_by_partition: dict[int, Sequence[LakeRow]]) -> int:
        """Append rows not yet in the table, in one commit carrying one transaction per partition.

        Returns how many rows were written; rows at or below a partition's committed offset
        (a replay after a restart) are dropped.
        """
        fresh: list[LakeRow] = []
        transactions = []
        total = 0
        existing = self._table()  # one log read per flush, not one per partition
        for partition, rows in sorted(rows_by_partition.items()):
            total += len(rows)
            done = self.committed_offset(partition, existing)
            new = [r for r in rows if r[self.offset_field] > done]
            if new:
                fresh.extend(new)
                transactions.append(Transaction(app_id=self.app_id(partition), version=max(r[self.offset_field] for r in new)))
        self.skipped += total - len(fresh)
        if not fresh:
            return 0
        columns = list(zip(*fresh))
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, self.schema)]
        arrays.append(pa.array([self.epoch] * len(fresh), type=pa.string()))
        arrays.append(pa.array([event_date(t) for t in columns[self.time_field]], type=pa.string()))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        older = existing is not None and "topic_epoch" not in {f.name for f in existing.schema().fields}
        write_deltalake(
            str(self.path),
            table,
            mode="append",
            partition_by=PARTITION_BY,
            schema_mode="merge" if older else None,  # a table written before rows carried their epoch
            commit_properties=CommitProperties(
                app_transactions=transactions,
                custom_metadata={"writer": "recsys.stream", "kafka_partitions": ",".join(str(p) for p in sorted(rows_by_partition))},
            ),
        )
        self.commits += 1
        self.rows += len(fresh)
        return len(fresh)


def read_events(path: Path, version: int | None = None, columns: Iterable[str] | None = None) -> pa.Table:
    return open_table(path, version).to_pyarrow_table(columns=list(columns) if columns else None)


def compact(path: Path, retention_hours: int = 168) -> dict:
    """Daily maintenance: merge small files (optimize), then drop unreferenced ones (vacuum)."""
    table = open_table(path)
    optimized = table.optimize.compact()
    removed = table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
    return {"optimize": optimized, "vacuumed_files": len(removed), "version": table.version()}
