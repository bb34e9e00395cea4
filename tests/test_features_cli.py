"""`recsys features`, `recsys stream status`, `recsys lake compact` and the registry checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from features.definitions import registry_objects
from features.names import popularity_fields, stats_fields
from features.online_writer import OnlineWriter
from features.store import RegistryNotApplied, apply, describe, registered_views
from streaming.lake import LakeWriter, compact, read_events
from tests.conftest import REPO_ROOT, isolated


def _recsys(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECSYS_DATA_DIR": str(settings.data_dir), "RECSYS_REDIS__PORT": str(settings.redis.port),
           "RECSYS_BROKER__PORT": str(settings.broker.port), "RECSYS_FEATURES__PROJECT": settings.features.project,
           "RECSYS_TOPICS__EVENTS": settings.topics.events}
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_features_apply_then_list_shows_every_view(stack_settings, tmp_path):
    s = isolated(stack_settings, tmp_path)
    with pytest.raises(RegistryNotApplied, match="recsys features apply"):
        registered_views(s)
    done = _recsys(s, "features", "apply")
    assert done.returncode == 0, done.stderr
    listed = _recsys(s, "features", "list")
    assert listed.returncode == 0, listed.stderr
    for view in ("user_stats", "item_stats", "user_recent", "item_popularity", "item_covisit"):
        assert view in listed.stdout
    rows = describe(s)
    assert {r.feature for r in rows if r.view == "item_popularity"} == set(popularity_fields(s.features))
    assert {r.feature for r in rows if r.view == "user_stats"} == set(stats_fields())
    assert all(r.source.endswith("_push") for r in rows)
    exports = _recsys(s, "features", "env").stdout
    assert "RECSYS_FEAST_REDIS" in exports and str(s.redis.port) in exports


def test_sql_registry_is_an_option(stack_settings, tmp_path):
    s = isolated(stack_settings, tmp_path)
    data = s.model_dump()
    data["features"]["registry"] = f"sqlite:///{tmp_path}/registry/feast.sqlite"
    s = type(s).model_validate(data)
    assert apply(s) == sorted(registered_views(s))
    assert (tmp_path / "registry" / "feast.sqlite").is_file()


def test_writer_refuses_a_computation_that_disagrees_with_the_registry(stack_settings, tmp_path):
    s = isolated(stack_settings, tmp_path)
    apply(s)
    writer = OnlineWriter(s)
    with pytest.raises(RuntimeError, match="recsys features apply"):
        writer.require("user_stats", {"n_events": 1})


def test_registry_objects_follow_the_configured_windows(stack_settings, tmp_path):
    s = isolated(stack_settings, tmp_path)
    data = s.model_dump()
    data["features"]["windows"] = [{"name": "15m", "size_s": 900, "slide_s": 60}]
    s = type(s).model_validate(data)
    views = {o.name: o for o in registry_objects(s) if hasattr(o, "features")}
    fields = {f.name for f in views["item_popularity"].features}
    assert "pop_15m_click" in fields and "pop_1h" not in fields


def test_stream_status_of_a_job_that_never_ran(stack_settings, tmp_path):
    s = isolated(stack_settings, tmp_path)
    done = _recsys(s, "stream", "status")
    assert done.returncode == 3 and "stopped" in done.stdout


def test_lake_writer_is_idempotent_and_compact_keeps_rows(tmp_path: Path):
    writer = LakeWriter(tmp_path / "events", "job:topic:epoch")
    rows = [(f"e{i}", "u", "i", "click", None, 1_700_000_000_000 + i, None, 0, i, False, 0) for i in range(20)]
    assert writer.append(0, rows[:8]) == 8
    assert writer.append(0, rows) == 12  # a replay of 0..7 is dropped, the rest lands
    assert writer.append(0, rows) == 0
    assert writer.append(1, rows[:3]) == 3  # another partition has its own transaction id
    assert writer.committed_offset(0) == 19 and writer.committed_offset(1) == 2
    before = read_events(tmp_path / "events").num_rows
    compact(tmp_path / "events", retention_hours=0)
    table = read_events(tmp_path / "events")
    assert before == table.num_rows == 23
    assert table.column("event_date").to_pylist()[0] == "2023-11-14"


def test_offsets_in_the_lake_count_per_topic_incarnation(tmp_path: Path):
    """A recreated topic numbers records from 0 again: the backfill's ``below`` filter and its
    ``next_offsets`` (where the streaming trainer starts) concern the current incarnation only."""
    from batch.backfill import compute
    from infra.settings import Settings

    s = Settings(data_dir=tmp_path)
    row = lambda tag, i: (f"{tag}{i}", "u", f"i{i}", "click", None, 1_700_000_000_000 + i, None, 0, i, False, 0)  # noqa: E731
    LakeWriter(s.paths.events_table, "job:topic:A", "A").append(0, [row("a", i) for i in range(50)])
    LakeWriter(s.paths.events_table, "job:topic:B", "B").append(0, [row("b", i) for i in range(5)])
    assert set(read_events(s.paths.events_table, columns=["topic_epoch"]).column(0).to_pylist()) == {"A", "B"}
    assert compute(s, progress=False, epoch="B").next_offsets == {0: 5}  # not 50: offsets 5..49 were another topic's
    partial = compute(s, progress=False, epoch="B", below={0: 2})
    assert partial.events == 50 + 2 and partial.next_offsets == {0: 2}  # all of A, B's offsets 0 and 1
    assert compute(s, progress=False).next_offsets == {0: 50}  # without an epoch: every row counts (old tables)


def test_missing_lake_table_says_what_to_do(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="recsys stream start"):
        read_events(tmp_path / "nothing")


def test_cached_feature_spec_follows_a_re_applied_registry(stack_settings, tmp_path):
    from features.model_inputs import RegistrySpecCache, feature_spec

    s = isolated(stack_settings, tmp_path)
    apply(s)
    cache = RegistrySpecCache(s)
    first = cache()
    assert cache() is first  # unchanged registry: not read again
    data = s.model_dump()
    data["features"]["windows"] = [{"name": "15m", "size_s": 900, "slide_s": 60}]
    narrower = type(s).model_validate(data)
    apply(narrower)  # same registry file, other views
    changed = cache()
    assert changed == feature_spec(narrower) and changed != first
    assert any("pop_15m" in ref for ref in changed.item_refs)
