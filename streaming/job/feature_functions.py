"""The Python functions of the Flink feature job: Flink state, timers and writes around the
job's steps, each in its own module.

Records reach Python in micro-batches (one row per Kafka partition per ``stream.batch_ms`` of
processing time, built by the Java SQL runtime), because crossing the Java/Python boundary
costs far more than computing a feature. ``PartitionFunction`` (keyed by Kafka partition) reads
each micro-batch (streaming.job.micro_batch: decode, dead letters through
streaming.job.dead_letters, lateness), buffers its rows for the Delta ``events`` table
(streaming.job.lake_buffer), updates per-user state (streaming.job.user_updates) and routes item
updates by item shard; ``ItemShardFunction`` (keyed by shard) updates per-item state
(streaming.job.item_updates). All state is Flink keyed state, so checkpoints cover it; feature
values go to Redis through streaming.job.feature_writer, written when due (this module).

Lateness is streaming.lateness's rule (per Kafka partition, from event time, in offset order);
late events land in the lake (``late = true``) and in no feature.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from infra.settings import Settings
from streaming.job.dead_letters import JobDeadLetters
from streaming.job.settings_handoff import CarriesSettings
from streaming.job.item_updates import ItemUpdates, route
from streaming.job.lake_buffer import LakeBuffer
from streaming.job.micro_batch import MicroBatch, ReadBatch, read_batch
from streaming.vocabulary import EventVocabulary
from streaming.job.state_cache import LocalStateCache
from streaming.job.user_updates import UserUpdates
from streaming.lateness import Lateness

if TYPE_CHECKING:
    from infra.settings import StreamSettings

PICKLED = Types.PICKLED_BYTE_ARRAY()
# user/item states, encoded by their to_bytes (the Java serializer is the same as PICKLED's, so
# checkpoints written when states were pickled restore; from_bytes reads both)
STATE_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
WRITER_BUSY_RETRY_MS = 10
BEHIND_MS = 1000  # a job whose oldest unwritten record is older than this is catching up


class _FeatureFunction(CarriesSettings, KeyedProcessFunction):
    """Shared plumbing: settings (pickled without secrets), online writer, flush timer, metrics file."""

    role = "feature"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        from streaming.job.feature_writer import make_writer
        from streaming.job.stream_metrics import MetricsFile, metrics_dir

        self.cfg = self.settings.features
        self.stream = self.settings.stream
        try:
            index = runtime_context.get_index_of_this_subtask()
        except AttributeError:  # thread mode (pemja) does not expose it
            import os

            index = os.getpid()
        self.metrics = MetricsFile(metrics_dir(self.settings), f"{self.role}-{index}")
        self.writer = make_writer(self.settings, self.metrics, f"{self.role}-{index}")
        self._write_timer_at: int | None = None  # the earliest write timer registered, ms
        self._seen_marker = runtime_context.get_state(ValueStateDescriptor("has_state", Types.BOOLEAN()))
        self._checked_keys: set[int] = set()
        self._updaters: list[UserUpdates | ItemUpdates] = []  # the feature states this function keeps
        self._oldest_pending_ms: int | None = None  # Kafka timestamp of the oldest record not yet written
        self._frozen_at = 0.0
        self._last_input_at = time.monotonic()

    def _opened(self) -> None:
        """Report this instance ready (stream_runner.wait_idle counts them)."""
        self.metrics.set("opened_at", time.time())
        self.metrics.maybe_write(force=True)

    def _pending_since(self, kafka_ms: int | None) -> None:
        """Records up to ``kafka_ms`` (their Kafka time; None: unknown) wait to be written."""
        if kafka_ms is None:
            return
        if self._oldest_pending_ms is None or kafka_ms < self._oldest_pending_ms:
            self._oldest_pending_ms = kafka_ms

    def _check_key(self, key: int) -> None:
        """First time this process sees ``key``: if Flink holds no state for it, caches are
        complete; if it does (a restore), its features are written again from that state."""
        if key in self._checked_keys:
            return
        self._checked_keys.add(key)
        if self._seen_marker.value() is None:
            for updater in self._updaters:
                updater.cache.mark_authoritative(key)
            self._seen_marker.update(True)
        else:
            # writes still staged, or handed to the writer process, when the job stopped were lost
            # with it, while the checkpoint has the states they came from; an entity not touched
            # again would keep older values online, so one pass over the key's states puts them level
            self.metrics.inc("restore_rewrites", sum(u.rewrite_restored(key) for u in self._updaters))

    def _after(self, ctx: "KeyedProcessFunction.Context") -> None:
        """After a micro-batch: write the staged features now, or within :meth:`_write_wait_ms`."""
        self._freeze_old_objects()
        self._last_input_at = time.monotonic()
        self._write_if_due(ctx)
        self.metrics.maybe_write()

    def _write_if_due(self, ctx: "KeyedProcessFunction.Context") -> None:
        """Write now if due; otherwise make sure a timer comes back when it may be (a writer
        process still busy with the last write is asked again every ``WRITER_BUSY_RETRY_MS``;
        while catching up, also once the input may have stopped, see :meth:`_drained`)."""
        writer = self.writer
        wait_ms = self._write_wait_ms()
        if writer.due(wait_ms, self.stream.online_flush_rows):
            self._flush_online()
        elif writer.pending_rows:
            in_ms = wait_ms - writer.ms_since_write()
            if wait_ms > self.stream.online_flush_ms:
                in_ms = min(in_ms, self._drain_ms())
            self._write_timer(ctx, max(WRITER_BUSY_RETRY_MS, in_ms))

    def _write_wait_ms(self) -> int:
        """``online_flush_ms``; ``catch_up_flush_ms`` while the job is behind and records keep
        coming: then freshness is lost anyway, and writing a hot entity once per interval instead
        of once per micro-batch lets the job catch up sooner (fewer rows to compute, encode and
        send: 2 s instead of 0.5 s took the job's CPU per event down by a sixth and halved the
        writer process's). When the input stops, the rest is written at once."""
        s = self.stream
        if s.catch_up_flush_ms and self._behind() and not self._drained():
            return max(s.online_flush_ms, s.catch_up_flush_ms)
        return s.online_flush_ms

    def _behind(self) -> bool:
        """The oldest record waiting to be written was produced more than ``BEHIND_MS`` ago: the
        job is catching up (writes coalesce, and go to the writer process)."""
        oldest = self._oldest_pending_ms
        return oldest is not None and time.time() * 1000 - oldest > BEHIND_MS

    def _drain_ms(self) -> int:
        """No micro-batch for this long means no input: the Java side emits one every
        ``batch_ms`` while there are records."""
        return max(100, 3 * self.stream.batch_ms)

    def _drained(self) -> bool:
        return (time.monotonic() - self._last_input_at) * 1000 >= self._drain_ms()

    def _freeze_old_objects(self) -> None:
        """Keep Python's cyclic GC off the feature state.

        The states of every user and item stay alive in this process; a full (generation 2)
        collection walks all of them, which took 225 ms with 5k users and stalled every record
        behind it (the freshness p99). Every ``gc_freeze_every_ms``, young objects are collected
        (cycles among them freed) and the survivors are moved out of the collector's reach with
        ``gc.freeze()``; refcounting still frees them when a state is dropped.
        """
        every_ms = self.stream.gc_freeze_every_ms
        if every_ms and (time.monotonic() - self._frozen_at) * 1000 >= every_ms:
            import gc

            gc.collect(1)
            gc.freeze()
            self._frozen_at = time.monotonic()  # (gc.get_freeze_count() would walk every frozen object)

    def _timer(self, ctx: "KeyedProcessFunction.Context", in_ms: int) -> None:
        now = ctx.timer_service().current_processing_time()
        ctx.timer_service().register_processing_time_timer(now + in_ms)

    def _write_timer(self, ctx: "KeyedProcessFunction.Context", in_ms: float) -> None:
        """A timer for the writes, unless one comes sooner (writes cover every key of this instance)."""
        at = ctx.timer_service().current_processing_time() + int(in_ms)
        if self._write_timer_at is None or at < self._write_timer_at:
            ctx.timer_service().register_processing_time_timer(at)
            self._write_timer_at = at

    def _flush_online(self) -> None:
        self.writer.flush(self._oldest_pending_ms, behind=self._behind())
        self._oldest_pending_ms = None

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        if self._write_timer_at is not None and timestamp >= self._write_timer_at:
            self._write_timer_at = None
        if self.writer.pending_rows:
            self._write_if_due(ctx)
        self.metrics.maybe_write(force=True)
        return []

    def close(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        if getattr(self, "metrics", None) is not None:
            self.metrics.maybe_write(force=True)


def _cache(stream: "StreamSettings", decode: Callable[[bytes], Any]) -> LocalStateCache:
    return LocalStateCache(stream.local_state_entries, decode)


def _item_updates(fn: _FeatureFunction, runtime_context: RuntimeContext) -> ItemUpdates:
    from features.compute import ItemState

    states = runtime_context.get_map_state(MapStateDescriptor("items", Types.STRING(), STATE_BYTES))
    return ItemUpdates(fn.cfg, states, _cache(fn.stream, ItemState.from_bytes), fn.writer)


class PartitionFunction(_FeatureFunction):
    """Per Kafka partition: read the micro-batch (decode, dead-letter, lateness:
    streaming.job.micro_batch), buffer its lake rows (streaming.job.lake_buffer), update users
    (streaming.job.user_updates), and route item updates on to the item stage, or, with ``fused``
    (one subtask, the local default), apply them here (streaming.job.item_updates), which saves a
    shuffle and a Python worker. Keyed by Kafka partition, or by a constant when fused;
    per-partition values (watermarks, lake buffers) are kept in maps so both layouts share one path."""

    role = "partition"

    def __init__(self, settings: Settings, fused: bool = False) -> None:
        super().__init__(settings)
        self.fused = fused

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from features.compute import UserState
        from streaming.lake import LakeWriter

        s = self.stream
        self.lake = LakeBuffer(
            runtime_context.get_list_state(ListStateDescriptor("lake_buffer", PICKLED)),  # (partition, rows)
            runtime_context.get_state(ValueStateDescriptor("lake_buffered_rows", Types.LONG())),
            LakeWriter.for_settings(self.settings), s.lake_flush_rows, s.lake_flush_ms, self.metrics,
            on_commit=self._committed)
        self.max_event_time = runtime_context.get_state(ValueStateDescriptor("max_event_time", PICKLED))  # {partition: ms}
        users = runtime_context.get_map_state(MapStateDescriptor("users", Types.STRING(), STATE_BYTES))
        self.users = UserUpdates(self.cfg, users, _cache(s, UserState.from_bytes), self.writer)
        self.items = _item_updates(self, runtime_context) if self.fused else None
        self._updaters = [self.users] + ([self.items] if self.items is not None else [])
        self.dead_letters = JobDeadLetters(self.settings, self.metrics)
        self.aliases = EventVocabulary.from_settings(self.settings).aliases
        self._opened()

    def process_element(self, row: Any, ctx: "KeyedProcessFunction.Context") -> Iterable[tuple]:
        from streaming.dlq import now_ms

        started = time.perf_counter()
        key = ctx.get_current_key()
        self._check_key(key)
        batch = MicroBatch.from_row(row)
        self._pending_since(batch.oldest_ms)
        lateness = Lateness.for_settings(self.stream, self.max_event_time.value() or {})
        read = read_batch(batch, lateness, self.settings.producer.max_event_bytes, now_ms(), self.dead_letters,
                          self.aliases)
        self.max_event_time.update(lateness.newest)
        item_events = self.users.apply(key, read.on_time)
        self._count(batch, read)
        timer_ms = self.lake.add(key, batch.partition, read.rows)
        if timer_ms is not None:
            self._timer(ctx, timer_ms)
        routed = None
        if self.items is not None:
            self.metrics.inc("updates", self.items.apply_events(key, item_events))
        else:
            routed = route(item_events, self.stream.item_shards)
        self._after(ctx)
        self.metrics.inc("busy_s", time.perf_counter() - started)
        for shard, shard_updates in (routed or {}).items():
            # keyed by shard in Java (streaming.job.feature_job.keyed); the Kafka time of the batch's
            # oldest record goes along, so the item stage knows when it is behind, as this one does
            yield Row(shard, (batch.oldest_ms, shard_updates))

    def _count(self, batch: MicroBatch, read: ReadBatch) -> None:
        metrics = self.metrics
        metrics.inc("events_in", len(batch.records))
        metrics.inc("late", read.late)
        metrics.inc("events", len(read.on_time))
        metrics.inc("batches")
        if "first_batch_at" not in metrics.counters:
            metrics.set("first_batch_at", time.time())
        if batch.last_offset is not None:
            metrics.set(f"offset_p{batch.partition}", batch.last_offset)

    def _committed(self) -> None:
        """After each lake commit: dead letters are acknowledged as often as rows land."""
        self.dead_letters.flush()
        self.metrics.maybe_write(force=True)

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        self.lake.on_timer(ctx.get_current_key())
        return super().on_timer(timestamp, ctx)


class ItemShardFunction(_FeatureFunction):
    """Per item shard: item stats, windowed popularity, co-visitation counts."""

    role = "items"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self.items = _item_updates(self, runtime_context)
        self._updaters = [self.items]
        self._opened()

    def process_element(self, element: tuple[int | None, list[tuple]], ctx: "KeyedProcessFunction.Context") -> Iterable[Any]:
        """``element``: (Kafka timestamp of the oldest record behind these updates, the updates)."""
        started = time.perf_counter()
        oldest_ms, updates = element
        self._pending_since(oldest_ms)
        shard = ctx.get_current_key()
        self._check_key(shard)
        self.metrics.inc("updates", self.items.apply_updates(shard, updates))
        self._after(ctx)
        self.metrics.inc("busy_s", time.perf_counter() - started)
        return []
