"""The Python function of the attribution job: impressions and events in, counts and lake rows out.

One keyed function reads the micro-batches of both topics (``(topic, partition, offsets,
payloads, oldest Kafka time)``, built by the Java SQL runtime as in the feature job) in offset
order per partition and hands each record to ``streaming.live_attribution``: users' pending
lists and engaging events are Flink map state, the running totals and the lateness positions
value state, the impression rows for the lake list state (``streaming.job.lake_buffer``), so a
checkpoint covers all of it. After each micro-batch the changed totals are written to Redis as
they are (``streaming.attribution_counts``: a replay after a restore writes the same numbers);
the lake commits are idempotent per partition. Every ``EXPIRE_EVERY_MS`` the users' state is
swept of what can no longer match.

An event the feature job would dead-letter is skipped here (it is dead-lettered there, once);
an impression that is not a served list's JSON is counted as ``bad_impressions``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from infra.settings import Settings
from streaming.attribution_counts import AttributionCounts, RunningTotals
from streaming.events import InvalidEvent, decode_event
from streaming.job.lake_buffer import LakeBuffer
from streaming.job.micro_batch import MicroBatch
from streaming.job.settings_handoff import CarriesSettings
from streaming.job.stream_metrics import MetricsFile, attribution_metrics_dir
from streaming.lake import ImpressionRow, LakeWriter
from streaming.live_attribution import NO_ARM, LiveAttribution, shown_at
from streaming.vocabulary import EventVocabulary

PICKLED = Types.PICKLED_BYTE_ARRAY()
EXPIRE_EVERY_MS = 10_000
IMPRESSION_PARTITION = 1 << 16  # impressions' partitions are kept apart from the events' in the lateness rule
LAKE_FLUSH_ROWS = 50_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _served_list(payload: bytes) -> dict | None:
    try:
        record = orjson.loads(payload)
        if not (isinstance(record, dict) and isinstance(record.get("items"), list) and record.get("request_id")
                and record.get("user_id") is not None and record.get("model_version")):
            return None
        for item in record["items"]:
            item["item_id"], item["position"], item["sources"] = str(item["item_id"]), int(item["position"]), list(item["sources"])
        record["user_id"] = str(record["user_id"])
        shown_at(record)  # it has a time
        return record
    except (ValueError, TypeError, KeyError):
        return None


def _shard(key: Any) -> int:
    return int(key if isinstance(key, int) else key[0])


class AttributionFunction(CarriesSettings, KeyedProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        s, a = self.settings, self.settings.attribution
        vocab = EventVocabulary.from_settings(s)
        self.aliases = vocab.aliases
        self.engaging = vocab.engaging(a.event_types)
        self.window_ms = int(a.window_s * 1000)
        self.slack_ms = s.stream.out_of_orderness_ms + s.stream.allowed_lateness_ms
        self.metrics = MetricsFile(attribution_metrics_dir(s), "attribution")
        self.users = runtime_context.get_map_state(MapStateDescriptor("users", Types.STRING(), PICKLED))
        self.position = runtime_context.get_state(ValueStateDescriptor("position", PICKLED))  # lateness, totals
        self.lake = LakeBuffer(runtime_context.get_list_state(ListStateDescriptor("lake_rows", PICKLED)),
                               runtime_context.get_state(ValueStateDescriptor("lake_count", Types.LONG())),
                               LakeWriter.for_impressions(s), LAKE_FLUSH_ROWS, int(a.lake_commit_every_s * 1000),
                               self.metrics)
        self.counts = AttributionCounts.for_settings(s)
        self.impressions_topic = s.topics.impressions
        self.max_bytes = s.producer.max_event_bytes
        self._expire_at: int | None = None
        self.metrics.set("opened_at", time.time())
        self.metrics.maybe_write(force=True)

    # -- state ---------------------------------------------------------------------------------
    def _load(self) -> tuple[LiveAttribution, RunningTotals]:
        live = LiveAttribution(self.window_ms, self.engaging, self.slack_ms, users=self.users)
        saved = self.position.value()
        totals = RunningTotals()
        if saved is not None:
            live.lateness.newest, live.late, live.newest, totals.totals = saved
        return live, totals

    def _save(self, live: LiveAttribution, totals: RunningTotals) -> None:
        self.position.update((live.lateness.newest, live.late, live.newest, totals.totals))

    # -- records -------------------------------------------------------------------------------
    def process_element(self, row: Any, ctx: "KeyedProcessFunction.Context") -> Iterable[Any]:
        key = _shard(ctx.get_current_key())  # keyed in Java (streaming.job.feature_job.keyed): 0, one shard
        topic = row[0]
        batch = MicroBatch.from_row((row[1], row[2], row[3], row[4]))
        live, totals = self._load()
        late_before = live.late
        rows: list[ImpressionRow] = []
        if topic == self.impressions_topic:
            for offset, payload in batch.records:
                record = _served_list(payload)
                if record is None:
                    self.metrics.inc("bad_impressions")
                    continue
                totals.apply(live.impression(record, IMPRESSION_PARTITION + batch.partition))
                rows += ImpressionRow.of_record(record, shown_at(record), record.get("arm") or NO_ARM, batch.partition, offset)
            self.metrics.inc("impressions_in", len(batch.records))
        else:
            for _, payload in batch.records:
                try:
                    e = decode_event(payload, self.max_bytes, self.aliases)
                except InvalidEvent:
                    continue  # the feature job dead-letters it
                totals.apply(live.event({"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id,
                                         "event_type": e.event_type.value, "event_time": e.event_time}, batch.partition))
            self.metrics.inc("events_in", len(batch.records))
        written = self.counts.write(key, totals, _now_ms())
        self._save(live, totals)
        self.metrics.inc("late", live.late - late_before)
        self.metrics.inc("pairs_written", written)
        if written:
            self.metrics.set("counts_written_at", time.time())
        if batch.last_offset is not None:
            self.metrics.set(f"offset_{topic}_p{batch.partition}", batch.last_offset)
        due = self.lake.add(key, batch.partition, rows)
        now = ctx.timer_service().current_processing_time()
        if due is not None:
            ctx.timer_service().register_processing_time_timer(now + due)
        if self._expire_at is None:
            self._expire_at = now + EXPIRE_EVERY_MS
            ctx.timer_service().register_processing_time_timer(self._expire_at)
        self.metrics.maybe_write()
        return []

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        key = _shard(ctx.get_current_key())
        self.lake.on_timer(key)
        if self._expire_at is not None and timestamp >= self._expire_at:
            live, totals = self._load()
            self.metrics.inc("users_dropped", live.expire())
            self._save(live, totals)
            self._expire_at = timestamp + EXPIRE_EVERY_MS
            ctx.timer_service().register_processing_time_timer(self._expire_at)
        self.metrics.maybe_write(force=True)
        return []


__all__ = ["AttributionFunction"]
