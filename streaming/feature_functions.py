"""The Python functions of the Flink feature job (thin wrappers over features.compute).

``LakeFunction`` (keyed by Kafka partition) validates each record, dead-letters bad ones, flags
late ones, buffers rows in Flink list state and appends them to the Delta ``events`` table with
an idempotent transaction; valid, non-late events go on to ``UserFunction`` (keyed by user) and
the item updates it emits to ``ItemFunction`` (keyed by item). Feature state lives in Flink
keyed state (checkpointed); feature values are written to Redis by features.online_writer.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from infra.settings import Settings

PICKLED = Types.PICKLED_BYTE_ARRAY()
# the valid event handed from the lake stage to the user stage
StreamEvent = tuple  # (event_id, user_id, item_id, event_type, value, event_time)


class _FeatureFunction(KeyedProcessFunction):
    """Shared plumbing: settings, online writer, flush timer, metrics file."""

    role = "feature"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        from features.online_writer import OnlineWriter
        from streaming.stream_metrics import MetricsFile

        self.cfg = self.settings.features
        self.stream = self.settings.stream
        try:
            index = runtime_context.get_index_of_this_subtask()
        except AttributeError:  # thread mode (pemja) does not expose it
            import os

            index = os.getpid()
        self.metrics = MetricsFile(metrics_dir(self.settings), f"{self.role}-{index}")
        self.writer = OnlineWriter(self.settings) if self.role != "lake" else None
        self._timer_set = False

    def _after(self, ctx: "KeyedProcessFunction.Context") -> None:
        writer = self.writer
        if writer is not None:
            if writer.due(self.stream.online_flush_ms, self.stream.online_flush_rows):
                self._flush_online()
            elif writer.pending_rows and not self._timer_set:
                now = ctx.timer_service().current_processing_time()
                ctx.timer_service().register_processing_time_timer(now + self.stream.online_flush_ms)
                self._timer_set = True
        self.metrics.maybe_write()

    def _flush_online(self) -> None:
        started = time.perf_counter()
        written = self.writer.flush()
        self.metrics.inc("online_flush_s", time.perf_counter() - started)
        self.metrics.inc("online_rows", written)
        self.metrics.set("online_batches", self.writer.batches)

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        self._timer_set = False
        if self.writer is not None and self.writer.pending_rows:
            self._flush_online()
        self.metrics.maybe_write(force=True)
        return []

    def close(self) -> None:
        if getattr(self, "writer", None) is not None and self.writer.pending_rows:
            self._flush_online()
        if getattr(self, "metrics", None) is not None:
            self.metrics.maybe_write(force=True)


def metrics_dir(settings: Settings):  # noqa: ANN201 - Path
    return settings.paths.run_dir / "stream-metrics"


class LakeFunction(_FeatureFunction):
    """Validate, dead-letter, flag late events, land every valid one in Delta exactly once."""

    role = "lake"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from streaming.lake import LakeWriter

        self.lake = LakeWriter.for_settings(self.settings)
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("lake_buffer", PICKLED))
        self.buffered: dict[int, int] = {}
        self._dlq = None

    def _dead_letter(self, payload: bytes, partition: int, offset: int, reason: str, detail: str) -> None:
        from streaming.dlq import DeadLetter, now_ms
        from streaming.producer import DeliveryReport, send_dead_letter

        if self._dlq is None:
            import threading

            from kafka import KafkaProducer

            self._dlq = KafkaProducer(bootstrap_servers=self.settings.broker.bootstrap, acks="all", linger_ms=20)
            self._dlq_report, self._dlq_lock = DeliveryReport(), threading.Lock()
        letter = DeadLetter(
            value=payload, key=None, reason=reason, detail=detail, stage="stream", time_ms=now_ms(),
            source=f"{self.settings.topics.events}/{partition}/{offset}",
        )
        send_dead_letter(self._dlq, self.settings.topics.dlq, letter, self._dlq_report, self._dlq_lock,
                         lambda obj, exc: self.metrics.inc("dlq_send_errors"))
        self.metrics.inc("dlq")

    def process_element(self, row: Any, ctx: "KeyedProcessFunction.Context") -> Iterable[StreamEvent]:
        from streaming.dlq import now_ms
        from streaming.events import InvalidEvent, decode_event

        payload, partition, offset = bytes(row[0]), row[1], row[2]
        self.metrics.inc("events_in")
        self.metrics.set(f"offset_p{partition}", offset)
        try:
            e = decode_event(payload, self.settings.producer.max_event_bytes)
        except InvalidEvent as exc:
            self._dead_letter(payload, partition, offset, exc.reason, exc.detail)
            self._after(ctx)
            return
        watermark = ctx.timer_service().current_watermark()
        late = watermark > 0 and e.event_time < watermark - self.stream.allowed_lateness_ms
        context = None if e.context is None else _json(e.context)
        self.buffer.add((e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time, context,
                         partition, offset, late, now_ms()))
        n = self.buffered.get(partition, 0) + 1
        self.buffered[partition] = n
        if n >= self.stream.lake_flush_rows:
            self._flush_lake(partition)
        elif n == 1:
            now = ctx.timer_service().current_processing_time()
            ctx.timer_service().register_processing_time_timer(now + self.stream.lake_flush_ms)
        if late:
            self.metrics.inc("late")
        else:
            yield (e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time)
        self._after(ctx)

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        self._flush_lake(ctx.get_current_key())
        return super().on_timer(timestamp, ctx)

    def _flush_lake(self, partition: int) -> None:
        rows = list(self.buffer.get() or [])
        if rows:
            rows.sort(key=lambda r: r[8])
            written = self.lake.append(partition, rows)
            self.metrics.inc("lake_rows", written)
            self.metrics.inc("lake_commits", 1 if written else 0)
            self.metrics.inc("lake_replayed_skipped", len(rows) - written)
        self.buffer.clear()
        self.buffered[partition] = 0
        if self._dlq is not None:
            self._dlq.flush()
        self.metrics.maybe_write(force=True)


class UserFunction(_FeatureFunction):
    """Per-user features; emits the item updates (own item + co-visits) of each event."""

    role = "user"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from features import names
        from features.compute import UserState

        self.names = names
        self.new_state = UserState
        self.state = runtime_context.get_state(ValueStateDescriptor("user", PICKLED))
        probe = UserState()
        self.writer.require(names.USER_STATS, probe.stats.features())
        self.writer.require(names.USER_RECENT, probe.recent_features())

    def process_element(self, e: StreamEvent, ctx: "KeyedProcessFunction.Context") -> Iterable[tuple]:
        from features.compute import user_step

        state = self.state.value() or self.new_state()
        updates = user_step(self.cfg, state, e[0], e[2], e[3], e[4], e[5])
        self.state.update(state)
        self.writer.stage(self.names.USER_STATS, e[1], state.stats.features, e[5])
        self.writer.stage(self.names.USER_RECENT, e[1], state.recent_features, e[5])
        self.metrics.inc("events")
        yield from updates
        self._after(ctx)


class ItemFunction(_FeatureFunction):
    """Per-item stats, windowed popularity and co-visitation counts."""

    role = "item"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from features import names
        from features.compute import ItemState

        self.names = names
        self.new_state = ItemState
        self.state = runtime_context.get_state(ValueStateDescriptor("item", PICKLED))
        probe = ItemState(len(self.cfg.windows))
        self.writer.require(names.ITEM_STATS, probe.stats.features())
        self.writer.require(names.ITEM_POPULARITY, probe.popularity_features(self.cfg))
        self.writer.require(names.ITEM_COVISIT, probe.covisit_features(self.cfg))

    def process_element(self, update: tuple, ctx: "KeyedProcessFunction.Context") -> Iterable[Any]:
        from features.compute import item_step

        state = self.state.value() or self.new_state(len(self.cfg.windows))
        item_step(self.cfg, state, update)
        self.state.update(state)
        item_id, event_type, _, event_time, covisits = update
        cfg, names, writer = self.cfg, self.names, self.writer
        if event_type:
            writer.stage(names.ITEM_STATS, item_id, state.stats.features, event_time)
            writer.stage(names.ITEM_POPULARITY, item_id, lambda: state.popularity_features(cfg), event_time)
        if covisits:
            writer.stage(names.ITEM_COVISIT, item_id, lambda: state.covisit_features(cfg), event_time)
        self.metrics.inc("updates")
        self._after(ctx)
        return []


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()


__all__ = ["ItemFunction", "LakeFunction", "UserFunction", "metrics_dir"]
