"""streaming.job.feature_writer: the writer process writes what the in-process writer writes, keeps
pace by coalescing, and fails loudly (with its log) when it dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from features import names
from features.compute import InMemoryFeatures
from features.store import apply, feature_store
from streaming.job.stream_metrics import metrics_dir
from streaming.job.feature_writer import ChildProcessWriter, InProcessWriter
from streaming.replay import load_events
from streaming.job.stream_metrics import MetricsFile, read_all
from tests.conftest import isolated

USER_VIEWS = (names.USER_STATS, names.USER_RECENT)
ITEM_VIEWS = (names.ITEM_STATS, names.ITEM_POPULARITY, names.ITEM_COVISIT)


def _fold(s, ml100k_path, n: int = 2000) -> InMemoryFeatures:
    fold = InMemoryFeatures(s.features)
    for e in load_events(ml100k_path).events[:n]:
        fold.add(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time)
    return fold


def _stage_all(writer, fold: InMemoryFeatures, cfg) -> None:
    for user_id, state in fold.users.items():
        writer.stage("user", USER_VIEWS, user_id, state, state.to_bytes(), state.stats.last_seen_ms)
    for item_id, state in fold.items.items():
        writer.stage("item", ITEM_VIEWS, item_id, state, state.online_bytes(cfg), state.stats.last_seen_ms)


def _online(s, view: str, key: str, ids: list[str]) -> list[dict]:
    store = feature_store(s)
    refs = [f"{view}:{f.name}" for f in store.get_feature_view(view).features]
    return store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()


def test_writer_process_writes_what_the_job_process_would(stack_settings, tmp_path, ml100k_path):
    here, child = (isolated(stack_settings, tmp_path / name) for name in ("here", "child"))
    for s in (here, child):
        apply(s)
    fold = _fold(here, ml100k_path)
    local = InProcessWriter(here, MetricsFile(metrics_dir(here), "partition-0"))
    _stage_all(local, fold, here.features)
    local.flush(None)
    remote = ChildProcessWriter(child, MetricsFile(metrics_dir(child), "partition-0"), "partition-0")
    _stage_all(remote, fold, child.features)
    assert remote.pending_rows == 2 * len(fold.users) + 3 * len(fold.items)
    produced_ms = int(time.time() * 1000) - 5_000
    remote.flush(produced_ms)
    remote.close()  # waits for the child to finish writing
    users, items = sorted(fold.users)[:50], sorted(fold.items)[:50]
    for view in USER_VIEWS:
        assert _online(child, view, names.USER_KEY, users) == _online(here, view, names.USER_KEY, users)
    for view in ITEM_VIEWS:
        assert _online(child, view, names.ITEM_KEY, items) == _online(here, view, names.ITEM_KEY, items)
    covisit = _online(child, names.ITEM_COVISIT, names.ITEM_KEY, items)
    assert any(covisit["covisit_items"])  # the top K survived the trimmed encoding
    metrics = read_all(metrics_dir(child))["writer-partition-0"]
    assert metrics["online_rows"] == 2 * len(fold.users) + 3 * len(fold.items)
    assert metrics["write_delay_ms"] >= 5_000 and metrics["last_write_at"] > produced_ms / 1000


def test_writer_process_coalesces_while_busy_and_stages_merge_views(stack_settings, tmp_path, monkeypatch):
    s = isolated(stack_settings, tmp_path)
    apply(s)
    writer = ChildProcessWriter(s, MetricsFile(metrics_dir(s), "items-0"), "items-0")
    try:
        from features.compute import ItemState

        item = ItemState(len(s.features.windows))
        item.add_event(s.features, "click", None, 1_000)
        writer.stage("item", (names.ITEM_STATS, names.ITEM_POPULARITY), "a", item, item.online_bytes(s.features), 1_000)
        writer.stage("item", (names.ITEM_COVISIT,), "a", item, item.online_bytes(s.features), 2_000)
        assert writer.pending_rows == 3  # one entity, the union of its views
        assert writer.due(0, 10)
        busy = monkeypatch.context()
        with busy as patch:  # the child has not acknowledged its last write yet
            patch.setattr(writer, "in_flight", lambda: 1)
            assert not writer.due(0, 10)  # keep staging, write together later
            assert writer.due(0, 3)  # unless too many rows wait
    finally:
        writer.close()


def test_a_dead_writer_process_stops_the_job_with_its_log(stack_settings, tmp_path, ml100k_path):
    s = isolated(stack_settings, tmp_path)
    apply(s)
    writer = ChildProcessWriter(s, MetricsFile(metrics_dir(s), "partition-0"), "partition-0")
    fold = _fold(s, ml100k_path, 200)
    os.kill(writer._proc.pid, signal.SIGKILL)
    writer._proc.wait(timeout=10)
    _stage_all(writer, fold, s.features)
    assert writer.due(60_000, 10**6)  # not waiting for the dead child's ack: due, so the job finds out now
    with pytest.raises(RuntimeError, match="feature writer process exited") as failure:
        writer.flush(None)
    assert str(writer.log) in str(failure.value) and "restart the job" in str(failure.value)


def test_writes_stay_in_the_job_process_while_it_keeps_up(stack_settings, tmp_path, ml100k_path, monkeypatch):
    """At a trickle the hop to the child costs more latency than the write: the job writes itself,
    unless earlier writes are still with the child (they must land first)."""
    s = isolated(stack_settings, tmp_path)
    apply(s)
    metrics = MetricsFile(metrics_dir(s), "partition-0")
    writer = ChildProcessWriter(s, metrics, "partition-0")
    try:
        fold = _fold(s, ml100k_path, 300)
        _stage_all(writer, fold, s.features)
        writer.flush(None, behind=False)
        assert writer._sent == 0 and metrics.counters["online_rows"] == 2 * len(fold.users) + 3 * len(fold.items)
        users = sorted(fold.users)[:5]
        assert all(n > 0 for n in _online(s, names.USER_STATS, names.USER_KEY, users)["n_events"])  # written already
        with monkeypatch.context() as patch:
            patch.setattr(writer, "in_flight", lambda: 1)
            _stage_all(writer, fold, s.features)
            writer.flush(None, behind=False)
        assert writer._sent == 1  # went after the write in flight, to the child
    finally:
        writer.close()
