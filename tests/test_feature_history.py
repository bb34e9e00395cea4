"""The training feature history is written in bounded chunks and reads back as if held whole."""

from __future__ import annotations

import pyarrow.parquet as pq

from batch.feature_history import FeatureHistory
from features import names
from features.compute import InMemoryFeatures
from features.definitions import snapshot_table
from streaming.replay import load_events
from tests.conftest import ML100K, make_settings


def _record(history: FeatureHistory, events: list[tuple]) -> None:
    fold = InMemoryFeatures(history.settings.features)
    for event_id, user_id, item_id, event_type, value, event_time in events:
        user, touched = fold.add(event_id, user_id, item_id, event_type, value, event_time)
        history.record(event_time, user_id, user, touched, fold.items)


def _tables(settings) -> dict[str, object]:  # noqa: ANN001
    return {v.name: pq.read_table(snapshot_table(settings, v.name)) for v in names.VIEWS
            if snapshot_table(settings, v.name).exists()}


def test_a_history_written_in_small_chunks_equals_one_written_whole(tmp_path):
    events = sorted(load_events(ML100K).events[:3000], key=lambda e: e.event_time)
    rows = [(e.event_id, e.user_id, e.item_id, e.event_type, e.value, e.event_time) for e in events]
    whole, chunked = make_settings(tmp_path / "whole"), make_settings(tmp_path / "chunked")
    one = FeatureHistory(whole, every_ms=3_600_000, chunk_rows=10**9)
    _record(one, rows)
    many = FeatureHistory(chunked, every_ms=3_600_000, chunk_rows=50)
    _record(many, rows)
    assert many.peak_buffered < 200 < one.peak_buffered  # the bound held
    assert one.publish() == many.publish()
    a, b = _tables(whole), _tables(chunked)
    assert set(a) == {v.name for v in names.VIEWS}
    for view in a:
        assert pq.ParquetFile(snapshot_table(chunked, view)).num_row_groups > 1 or a[view].num_rows <= 50
        assert a[view].equals(b[view]), view


def test_one_row_per_entity_and_instant_and_at_most_one_per_interval(tmp_path):
    settings = make_settings(tmp_path)
    history = FeatureHistory(settings, every_ms=1000, chunk_rows=1)  # a chunk at every instant boundary
    _record(history, [("e1", "u", "i1", "view", None, 10_000), ("e2", "u", "i2", "view", None, 10_000),
                      ("e3", "u", "i3", "view", None, 10_500),  # within the interval: not recorded
                      ("e4", "u", "i1", "view", None, 11_000)])
    history.publish()
    users = pq.read_table(snapshot_table(settings, names.USER_STATS)).to_pandas()
    assert users["n_events"].tolist() == [2, 4]  # the same instant's later event replaced its row
    assert [t.value // 10**6 for t in users["event_timestamp"]] == [10_000, 11_000]
    assert not list((settings.paths.lake_dir / "features").glob("*.tmp"))


def test_a_discarded_history_leaves_the_published_one(tmp_path):
    settings = make_settings(tmp_path)
    first = FeatureHistory(settings, every_ms=0)
    _record(first, [("e1", "u", "i1", "view", None, 1)])
    first.publish()
    second = FeatureHistory(settings, every_ms=0, chunk_rows=1)
    _record(second, [("e2", "v", "i2", "view", None, 2), ("e3", "v", "i3", "view", None, 3)])
    second.discard()
    assert pq.read_table(snapshot_table(settings, names.USER_STATS)).column("user_id").to_pylist() == ["u"]
    assert not list((settings.paths.lake_dir / "features").glob("*.tmp"))
