"""The Python functions of the Flink feature job (thin wrappers over features.compute).

Records reach Python in micro-batches (one row per Kafka partition per ``stream.batch_ms`` of
processing time, built by the Java SQL runtime), because crossing the Java/Python boundary
costs far more than computing a feature. ``PartitionFunction`` (keyed by Kafka partition)
validates each record, dead-letters bad ones, flags late ones, buffers rows in Flink list state
for the Delta ``events`` table (idempotent transaction per partition), updates per-user state
(Flink map state) and emits item updates grouped by item shard; ``ItemShardFunction`` (keyed by
shard) updates per-item state. All state is Flink keyed state, so checkpoints cover it; feature
values go to Redis through features.online_writer.

Lateness is streaming.lateness's rule (per Kafka partition, from event time, in offset order);
late events land in the lake (``late = true``) and in no feature.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Iterable

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from infra.settings import Settings, settings_from_snapshot, settings_snapshot
from streaming.lake import KAFKA_OFFSET, LakeRow
from streaming.lateness import Lateness
from models.ids import bucket  # stable across processes (unlike hash()): restored state keeps its shard

PICKLED = Types.PICKLED_BYTE_ARRAY()
# user/item states, encoded by their to_bytes (the Java serializer is the same as PICKLED's, so
# checkpoints written when states were pickled restore; from_bytes reads both)
STATE_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
WRITER_BUSY_RETRY_MS = 10
BEHIND_MS = 1000  # a job whose oldest unwritten record is older than this is catching up


class LocalStateCache:
    """Deserialised states of the keys this instance owns, in front of Flink map state.

    A map-state read is a blocking round trip to the JVM (around a millisecond on a busy 2-core
    box); this instance is the only writer of its keys, so its own copy is always current and
    Flink state (written every batch) is only read when it may hold something the copy lacks:
    after a restore, or after an eviction. For a key first seen with no state at all
    (``authoritative``), a missing entity is simply new, with no read.
    """

    def __init__(self, max_entries: int, decode: Callable[[bytes], Any]) -> None:
        self.max_entries = max_entries
        self.decode = decode
        self._states: dict[tuple[int, str], Any] = {}
        self._authoritative: set[int] = set()

    def mark_authoritative(self, key: int) -> None:
        self._authoritative.add(key)

    def get(self, key: int, entity: str, state: Any, new: Any) -> Any:
        found = self._states.get((key, entity))
        if found is None:
            stored = None if key in self._authoritative else state.get(entity)
            found = self._keep(key, entity, new() if stored is None else self.decode(stored))
        return found

    def adopt(self, key: int, entity: str, stored: bytes) -> Any:
        """The cached state, or ``stored`` (read from Flink state by the caller) decoded and cached."""
        found = self._states.get((key, entity))
        return found if found is not None else self._keep(key, entity, self.decode(stored))

    def _keep(self, key: int, entity: str, value: Any) -> Any:
        if len(self._states) >= self.max_entries:
            self._states.clear()
            self._authoritative.clear()  # evicted states live only in Flink state now
        self._states[(key, entity)] = value
        return value


class _FeatureFunction(KeyedProcessFunction):
    """Shared plumbing: settings, online writer, flush timer, metrics file."""

    role = "feature"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into the job graph with every secret masked: the workers take them from their
        environment (the job's own, or the TaskManagers' on a cluster)."""
        return {**self.__dict__, "settings": settings_snapshot(self.settings)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import os

        self.__dict__.update({**state, "settings": settings_from_snapshot(state["settings"], os.environ)})

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
        self._stores: list[tuple[str, LocalStateCache, Any]] = []  # ("user" | "item", cache, Flink map state)
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
            for _, cache, _ in self._stores:
                cache.mark_authoritative(key)
            self._seen_marker.update(True)
        else:
            self._rewrite_restored(key)

    def _rewrite_restored(self, key: int) -> None:
        """Write every entity of ``key`` from its restored state, once.

        Writes still staged, or handed to the writer process, when the job stopped were lost with
        it, while the checkpoint has the states they came from; an entity that is not touched
        again would keep older values online. One pass over the key's states puts them level.
        """
        n = 0
        for kind, cache, states in self._stores:
            for entity_id, stored in states.items():
                state = cache.adopt(key, entity_id, stored)
                if kind == "user":
                    views, t = self._user_views, state.stats.last_seen_ms
                else:
                    views = self._item_views[sum(state.stats.counts) > 0, bool(state.covisit)]
                    t = max(state.stats.last_seen_ms, state.latest_ms)
                self.writer.stage(kind, views, entity_id, state, None, t)
                n += 1
        self.metrics.inc("restore_rewrites", n)

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


class _ItemUpdates:
    """Applying item updates to item state (used by the item stage, or fused into one stage)."""

    def _open_items(self, runtime_context: RuntimeContext) -> None:
        from features.compute import ItemState, view_values

        self.new_item = ItemState
        self.items = runtime_context.get_map_state(MapStateDescriptor("items", Types.STRING(), STATE_BYTES))
        self.item_cache = LocalStateCache(self.stream.local_state_entries, ItemState.from_bytes)
        self._stores.append(("item", self.item_cache, self.items))
        names = self.names
        self._item_views = {  # (had an event, had co-visits) -> the views that changed
            (True, False): (names.ITEM_STATS, names.ITEM_POPULARITY), (False, True): (names.ITEM_COVISIT,),
            (True, True): (names.ITEM_STATS, names.ITEM_POPULARITY, names.ITEM_COVISIT), (False, False): (),
        }
        probe = ItemState(len(self.cfg.windows))
        for view in names.views_of("item"):
            self.writer.require(view, view_values(self.cfg, view, probe))

    def _apply_items(self, key: int, updates: Iterable[tuple]) -> int:
        """Routed item updates (the item stage of the two-stage graph)."""
        from features.compute import item_step

        cfg = self.cfg
        touched: dict[str, list] = {}  # item -> [state, max event time, had an event, had co-visits]
        get = self._item_getter(key, touched)
        n = 0
        for update in updates:
            n += 1
            item_id, event_type, _, event_time, covisits = update
            state = get(item_id)
            item_step(cfg, state, update)
            entry = touched[item_id]
            if event_time > entry[1]:
                entry[1] = event_time
            entry[2] = entry[2] or bool(event_type)
            entry[3] = entry[3] or bool(covisits)
        self._stage_items(key, touched)
        self.metrics.inc("updates", n)
        return n

    def _apply_events(self, key: int, events: list[tuple]) -> None:
        """Whole events straight onto item state (the fused stage): no update tuples at all."""
        from features.compute import apply_to_items

        cfg = self.cfg
        touched: dict[str, list] = {}
        get = self._item_getter(key, touched)
        for item_id, event_type, value, event_time, previous in events:
            apply_to_items(cfg, get, item_id, event_type, value, event_time, previous)
            entry = touched[item_id]
            entry[1] = max(entry[1], event_time)
            entry[2] = True
            if previous:
                entry[3] = True
                for other in previous:
                    other_entry = touched[other]
                    other_entry[1] = max(other_entry[1], event_time)
                    other_entry[3] = True
        self._stage_items(key, touched)
        self.metrics.inc("updates", len(events))

    def _item_getter(self, key: int, touched: dict[str, list]):  # noqa: ANN202 - Callable[[str], ItemState]
        n_windows = len(self.cfg.windows)
        new_item = lambda: self.new_item(n_windows)  # noqa: E731
        cache, items = self.item_cache, self.items

        def get(item_id: str):  # noqa: ANN202
            entry = touched.get(item_id)
            if entry is None:
                entry = touched[item_id] = [cache.get(key, item_id, items, new_item), -1, False, False]
            return entry[0]

        return get

    def _stage_items(self, key: int, touched: dict[str, list]) -> None:
        """Stage each touched item's changed views once, and write the states back to Flink."""
        writer, views = self.writer, self._item_views
        for item_id, (state, event_time, had_event, had_covisit) in touched.items():
            writer.stage("item", views[had_event, had_covisit], item_id, state, None, event_time)
            self.items.put(item_id, state.to_bytes())


class PartitionFunction(_ItemUpdates, _FeatureFunction):
    """Validate, DLQ, lateness, lake rows, user features; item updates go on to the item stage,
    or, with ``fused`` (one subtask, the local default), are applied here, which saves a shuffle
    and a Python worker. Keyed by Kafka partition, or by a constant when fused; per-partition
    values (watermarks, lake buffers) are kept in maps so both layouts share one code path."""

    role = "partition"

    def __init__(self, settings: Settings, fused: bool = False) -> None:
        super().__init__(settings)
        self.fused = fused

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from features import names
        from features.compute import UserState, view_values
        from streaming.lake import LakeWriter

        self.names = names
        self.lake = LakeWriter.for_settings(self.settings)
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("lake_buffer", PICKLED))  # (partition, rows)
        self.buffered_rows = runtime_context.get_state(ValueStateDescriptor("lake_buffered_rows", Types.LONG()))
        self.max_event_time = runtime_context.get_state(ValueStateDescriptor("max_event_time", PICKLED))  # {partition: ms}
        self.users = runtime_context.get_map_state(MapStateDescriptor("users", Types.STRING(), STATE_BYTES))
        self.user_cache = LocalStateCache(self.stream.local_state_entries, UserState.from_bytes)
        self._stores.append(("user", self.user_cache, self.users))
        self.new_user = UserState
        self._user_views = names.views_of("user")  # a user's views: all change together
        probe = UserState()
        for view in self._user_views:
            self.writer.require(view, view_values(self.cfg, view, probe))
        self._dlq = None
        self._lake_due_at: dict[int, float] = {}
        if self.fused:
            self._open_items(runtime_context)
        self._opened()

    def process_element(self, batch: Any, ctx: "KeyedProcessFunction.Context") -> Iterable[tuple]:
        from features.compute import item_updates
        from streaming.dlq import now_ms
        from streaming.events import InvalidEvent, decode_event

        started = time.perf_counter()
        partition = batch[0]
        key = ctx.get_current_key()
        self._check_key(key)
        offsets, payloads = batch[1], batch[2]
        oldest_ms = None if batch[3] is None else batch[3].to_epoch_milli()
        self._pending_since(oldest_ms)
        if len(offsets) != len(payloads):
            raise RuntimeError(f"micro-batch of partition {partition}: {len(offsets)} offsets for {len(payloads)} payloads")
        records = sorted(zip(offsets, payloads), key=lambda r: r[0])
        cfg, writer, metrics = self.cfg, self.writer, self.metrics
        max_bytes = self.settings.producer.max_event_bytes
        shards = self.stream.item_shards
        lateness = Lateness.for_settings(self.stream, self.max_event_time.value() or {})
        ingest = now_ms()
        rows: list[tuple] = []
        touched: dict[str, Any] = {}
        updates: dict[int, list[tuple]] = defaultdict(list)
        item_events: list[tuple] = []
        late = 0
        for offset, payload in records:
            payload = bytes(payload)
            try:
                e = decode_event(payload, max_bytes)
            except InvalidEvent as exc:
                self._dead_letter(payload, partition, offset, exc.reason, exc.detail)
                continue
            t = e.event_time
            is_late = lateness.observe(partition, t)
            event_type = e.event_type.value
            context = None if e.context is None else _json(e.context)
            rows.append(LakeRow(e.event_id, e.user_id, e.item_id, event_type, e.value, t, context, partition, offset,
                                is_late, ingest))
            if is_late:
                late += 1
                continue
            user = touched.get(e.user_id)
            if user is None:
                user = touched[e.user_id] = [self.user_cache.get(key, e.user_id, self.users, self.new_user), t]
            elif t > user[1]:
                user[1] = t
            previous = user[0].add(cfg, e.event_id, e.item_id, event_type, e.value, t)
            if self.fused:
                item_events.append((e.item_id, event_type, e.value, t, previous))
            else:
                for update in item_updates(e.item_id, event_type, e.value, t, previous):
                    updates[bucket(update[0], shards)].append(update)
        for user_id, (state, last_t) in touched.items():
            encoded = state.to_bytes()
            writer.stage("user", self._user_views, user_id, state, encoded, last_t)
            self.users.put(user_id, encoded)
        self.max_event_time.update(lateness.newest)
        metrics.inc("events_in", len(records))
        metrics.inc("late", late)
        metrics.inc("events", len(rows) - late)
        metrics.inc("batches")
        if "first_batch_at" not in metrics.counters:
            metrics.set("first_batch_at", time.time())
        if records:
            metrics.set(f"offset_p{partition}", records[-1][0])
        if rows:
            self.buffer.add((partition, rows))
            buffered = (self.buffered_rows.value() or 0) + len(rows)
            self.buffered_rows.update(buffered)
            if buffered >= self.stream.lake_flush_rows:
                self._flush_lake(key)
            elif key not in self._lake_due_at:
                self._lake_due_at[key] = time.monotonic() + self.stream.lake_flush_ms / 1000
                self._timer(ctx, self.stream.lake_flush_ms)
        if item_events:
            self._apply_events(key, item_events)
        self._after(ctx)
        self.metrics.inc("busy_s", time.perf_counter() - started)
        for shard, shard_updates in updates.items():
            # keyed by shard in Java (streaming.job.feature_job.keyed); the Kafka time of the batch's
            # oldest record goes along, so the item stage knows when it is behind, as this one does
            yield Row(shard, (oldest_ms, shard_updates))

    def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext") -> Iterable[Any]:
        key = ctx.get_current_key()
        due = self._lake_due_at.get(key)
        if due is not None and time.monotonic() >= due - 0.01:
            self._flush_lake(key)
        elif due is None and (self.buffered_rows.value() or 0) > 0:
            self._flush_lake(key)  # rows restored from a checkpoint
        return super().on_timer(timestamp, ctx)

    def _flush_lake(self, key: int) -> None:
        by_partition: dict[int, list[tuple]] = defaultdict(list)
        for partition, rows in self.buffer.get() or []:
            by_partition[partition].extend(rows)
        if by_partition:
            for rows in by_partition.values():
                rows.sort(key=lambda r: r[KAFKA_OFFSET])
            buffered = sum(len(rows) for rows in by_partition.values())
            written = self.lake.append_many(by_partition)
            self.metrics.inc("lake_rows", written)
            self.metrics.inc("lake_commits", 1 if written else 0)
            self.metrics.inc("lake_replayed_skipped", buffered - written)
        self.buffer.clear()
        self.buffered_rows.update(0)
        self._lake_due_at.pop(key, None)
        if self._dlq is not None:
            self._dlq.producer.flush()
        self.metrics.maybe_write(force=True)

    def _dead_letter(self, payload: bytes, partition: int, offset: int, reason: str, detail: str) -> None:
        if self._dlq is None:
            from infra import kafka_clients
            from streaming.dlq import DeadLetterSender

            self._dlq = DeadLetterSender(kafka_clients.producer(self.settings, "stream-dlq", acks="all", linger_ms=20),
                                         self.settings.topics.dlq, "stream",
                                         on_failure=lambda letter, exc: self.metrics.inc("dlq_send_errors"))
        self._dlq.send(payload, None, reason, detail, f"{self.settings.topics.events}/{partition}/{offset}")
        self.metrics.inc("dlq")


class ItemShardFunction(_ItemUpdates, _FeatureFunction):
    """Per item shard: item stats, windowed popularity, co-visitation counts."""

    role = "items"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        from features import names

        self.names = names
        self._open_items(runtime_context)
        self._opened()

    def process_element(self, element: tuple[int | None, list[tuple]], ctx: "KeyedProcessFunction.Context") -> Iterable[Any]:
        """``element``: (Kafka timestamp of the oldest record behind these updates, the updates)."""
        started = time.perf_counter()
        oldest_ms, updates = element
        self._pending_since(oldest_ms)
        shard = ctx.get_current_key()
        self._check_key(shard)
        self._apply_items(shard, updates)
        self._after(ctx)
        self.metrics.inc("busy_s", time.perf_counter() - started)
        return []


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()
