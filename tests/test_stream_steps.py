"""The stream job's steps without Flink: reading a micro-batch, the lake buffer, user and item updates.

The partition function (streaming.job.feature_functions) only wires Flink state and timers to
these; the real job is tested end to end in test_stream_features.py. Flink's keyed states are
stood in for by the few methods the steps call; the lake is a real Delta table on disk.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from features.compute import ItemState, UserState
from infra.settings import Settings
from streaming.events import Event
from streaming.job.item_updates import ItemUpdates, route
from streaming.job.lake_buffer import LakeBuffer
from streaming.job.micro_batch import MicroBatch, read_batch
from streaming.job.state_cache import LocalStateCache
from streaming.job.stream_metrics import MetricsFile
from streaming.job.user_updates import UserUpdates
from streaming.lake import LakeRow, LakeWriter, read_events
from streaming.lateness import Lateness


class MapState(dict):
    def put(self, key, value) -> None:
        self[key] = value


class ValueState:
    def __init__(self, value=None) -> None:
        self._value = value

    def value(self):
        return self._value

    def update(self, value) -> None:
        self._value = value


class ListState:
    def __init__(self, items=None) -> None:
        self.items = list(items or [])

    def get(self):
        return list(self.items)

    def add(self, item) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


class Writer:
    """Records what would go to Redis: (kind, views, entity, event time) per stage call."""

    def __init__(self) -> None:
        self.staged: list[tuple] = []

    def require(self, view, produced) -> None:
        pass

    def stage(self, kind, views, entity_id, state, encoded, t) -> None:
        self.staged.append((kind, views, entity_id, t))


def _event(i: int, user: str, item: str, t: int, event_type: str = "click") -> Event:
    return Event(event_id=f"e{i}", user_id=user, item_id=item, event_type=event_type, event_time=t)


def _payload(e: Event) -> bytes:
    return orjson.dumps(e.model_dump(mode="json"))


class _Instant:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def to_epoch_milli(self) -> int:
        return self.ms


def test_a_micro_batch_is_read_in_offset_order_and_each_record_lands_once():
    events = [_event(i, "u1", f"i{i}", 10_000 + i) for i in range(3)]
    row = (2, [12, 10, 11], [_payload(events[2]), _payload(events[0]), b"\xff"], _Instant(99))
    batch = MicroBatch.from_row(row)
    assert [o for o, _ in batch.records] == [10, 11, 12] and batch.oldest_ms == 99 and batch.last_offset == 12
    letters = []
    read = read_batch(batch, Lateness(slack_ms=0), 1000, 5, lambda *a: letters.append(a))
    assert [(r.event_id, r.kafka_offset) for r in read.rows] == [("e0", 10), ("e2", 12)]
    assert [e.event_id for e in read.on_time] == ["e0", "e2"] and read.late == 0
    assert [(p, o, reason) for _, p, o, reason, _ in letters] == [(2, 11, "not_utf8")]
    too_big = read_batch(MicroBatch(0, [(0, _payload(events[0]))], None), Lateness(slack_ms=0), 10, 0,
                         lambda *a: letters.append(a))
    assert too_big.rows == [] and letters[-1][3] == "oversize"
    with pytest.raises(RuntimeError, match="2 offsets for 1 payloads"):
        MicroBatch.from_row((0, [1, 2], [b"x"], None))


def test_lateness_carries_over_batches_per_partition():
    lateness = Lateness(slack_ms=100)
    first = read_batch(MicroBatch(0, [(0, _payload(_event(0, "u", "i", 10_000)))], None), lateness, 10_000, 0, print)
    # 500 ms older than partition 0's newest: late there, on time on partition 1
    older = _event(1, "u", "i", 9_500)
    late = read_batch(MicroBatch(0, [(1, _payload(older))], None), lateness, 10_000, 0, print)
    other = read_batch(MicroBatch(1, [(0, _payload(older))], None), lateness, 10_000, 0, print)
    assert first.late == 0 and late.late == 1 and late.rows[0].late and late.on_time == []
    assert other.late == 0 and lateness.newest == {0: 10_000, 1: 9_500}


def _lake_buffer(tmp_path: Path, flush_rows: int = 100, flush_ms: int = 50, rows=None, count=None):
    settings = Settings(data_dir=tmp_path)
    commits = []
    buffer = LakeBuffer(ListState(rows), ValueState(count), LakeWriter.for_settings(settings), flush_rows, flush_ms,
                        MetricsFile(tmp_path / "metrics", "t"), on_commit=lambda: commits.append(1))
    return settings, buffer, commits


def _rows(partition: int, offsets: list[int]) -> list[LakeRow]:
    return [LakeRow.of(_event(partition * 1000 + o, "u", "i", 1_000 + o), partition, o) for o in offsets]


def test_the_lake_buffer_commits_when_due_in_offset_order_and_once(tmp_path):
    settings, buffer, commits = _lake_buffer(tmp_path)
    assert buffer.add(7, 0, _rows(0, [3, 4])) == 50  # the caller registers a timer
    assert buffer.add(7, 1, _rows(1, [0])) is None  # one is pending already
    assert buffer.add(7, 0, _rows(0, [1, 2])) is None
    assert not buffer.on_timer(7) and commits == []  # not due yet
    time.sleep(0.06)
    assert buffer.on_timer(7) and commits == [1] and buffer.count.value() == 0
    lake = read_events(settings.paths.events_table).to_pandas()
    assert list(lake.sort_values(["kafka_partition", "kafka_offset"])["kafka_offset"]) == [1, 2, 3, 4, 0]
    buffer.add(7, 0, _rows(0, [2, 5]))  # a replay after a restart: offset 2 is in the lake already
    time.sleep(0.06)
    buffer.on_timer(7)
    assert len(read_events(settings.paths.events_table)) == 6
    assert buffer.metrics.counters["lake_replayed_skipped"] == 1


def test_the_lake_buffer_commits_at_once_when_full_and_restored_rows_on_the_first_timer(tmp_path):
    _, buffer, commits = _lake_buffer(tmp_path, flush_rows=3)
    assert buffer.add(1, 0, _rows(0, [0, 1, 2])) is None and commits == [1]
    old_rows = [tuple(r) for r in _rows(0, [4, 3])]  # as an older checkpoint holds them: plain tuples
    settings, restored, commits = _lake_buffer(tmp_path / "restored", rows=[(0, old_rows)], count=2)
    assert restored.on_timer(1) and commits == [1]
    assert list(read_events(settings.paths.events_table).to_pandas()["kafka_offset"]) == [3, 4]


def _users(writer: Writer, states: MapState | None = None) -> UserUpdates:
    cfg = Settings().features
    return UserUpdates(cfg, states if states is not None else MapState(),
                       LocalStateCache(1000, UserState.from_bytes), writer)


def _items(writer: Writer, states: MapState | None = None) -> ItemUpdates:
    cfg = Settings().features
    return ItemUpdates(cfg, states if states is not None else MapState(),
                       LocalStateCache(1000, ItemState.from_bytes), writer)


def test_each_touched_user_is_staged_and_stored_once_per_batch():
    writer = Writer()
    users = _users(writer)
    events = [_event(0, "u1", "a", 100), _event(1, "u2", "a", 150), _event(2, "u1", "b", 200)]
    item_events = users.apply(0, events)
    assert [(i, t, prev) for i, _, _, t, prev in item_events] == [("a", 100, []), ("a", 150, []), ("b", 200, ["a"])]
    assert sorted((e, t) for _, _, e, t in writer.staged) == [("u1", 200), ("u2", 150)]
    assert sum(UserState.from_bytes(users.states["u1"]).stats.counts) == 2


def test_routed_item_updates_equal_the_fused_stage():
    """Two stages (routed by shard) and one (fused) must leave every item in the same state."""
    events = [_event(i, f"u{i % 3}", f"i{i % 5}", 1_000 * i) for i in range(40)]
    item_events = _users(Writer()).apply(0, events)
    fused = _items(Writer())
    fused.apply_events(0, item_events)
    routed = route(item_events, shards=3)
    shards = {shard: _items(Writer()) for shard in routed}
    for shard, updates in routed.items():
        shards[shard].apply_updates(shard, updates)
    by_item = {item: state for s in shards.values() for item, state in s.states.items()}
    assert sorted(by_item) == sorted(fused.states) == [f"i{k}" for k in range(5)]
    for item, stored in fused.states.items():
        a, b = ItemState.from_bytes(stored), ItemState.from_bytes(by_item[item])
        assert (a.stats.counts, a.latest_ms, a.covisit) == (b.stats.counts, b.latest_ms, b.covisit), item


def test_restored_states_are_staged_again_once_each():
    states = MapState()
    _users(Writer(), states).apply(0, [_event(0, "u1", "a", 100), _event(1, "u2", "b", 300)])
    writer = Writer()
    assert _users(writer, states).rewrite_restored(0) == 2
    assert sorted((e, t) for _, _, e, t in writer.staged) == [("u1", 100), ("u2", 300)]
    items = MapState()
    _items(Writer(), items).apply_updates(0, [("a", "click", None, 100, []), ("b", "", None, 200, ["a"])])
    writer = Writer()
    assert _items(writer, items).rewrite_restored(0) == 2
    views = {e: v for _, v, e, _ in writer.staged}
    assert len(views["a"]) == 2 and views["b"] == ("item_covisit",)  # b only has co-visits
