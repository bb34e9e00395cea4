"""The PyFlink feature job against the real broker, Redis, Delta and Feast registry.

One job run serves several checks (starting a Flink job costs ~12 s here): part of ml-100k
plus malformed records are produced, the job is killed with SIGKILL mid-stream and restarted
from its checkpoint, then a late and an out-of-order event follow. Checked: exactly-once rows
in Delta, DLQ, features read through Feast equal an independent pandas computation and the
batch backfill (parity), late events counted in metrics and kept out of features.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from batch.backfill import compute as backfill
from features import names
from features.store import apply
from infra import kafka_clients
from streaming.job import stream_runner
from streaming.events import InvalidEvent, decode_event
from streaming.job.stream_metrics import metrics_dir
from streaming.lake import read_events
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.job.stream_metrics import read_all, records_read, totals
from streaming.topics import scan_topic
from tests.conftest import isolated
from tests.feature_checks import assert_online_equals_backfill, read_online

N_EVENTS = 12_000
MALFORMED = [b"not json {", b'{"event_id": "x1", "user_id": "1"}', b"\xff\xfe\x00"]
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def run(stack_settings, tmp_path_factory, ml100k_path):
    settings = isolated(stack_settings, tmp_path_factory.mktemp("stream"), checkpoint_interval_ms=1000, lake_flush_ms=1000)
    apply(settings)
    events = load_events(ml100k_path).events[:N_EVENTS]
    raw = kafka_clients.producer(settings, "test-raw")
    for i, bad in enumerate(MALFORMED):
        raw.send(settings.topics.events, key=f"bad{i}".encode(), value=bad)
    raw.flush()
    half = N_EVENTS // 2
    with EventProducer(settings) as producer:
        producer.send_many(events[:half])
    total = N_EVENTS + len(MALFORMED)

    def produce_rest() -> None:  # paced, so the crash lands in the middle of it
        with EventProducer(settings) as producer:
            for start in range(half, N_EVENTS, 300):
                producer.send_many(events[start:start + 300])
                producer.flush()
                time.sleep(0.1)

    stream_runner.start(settings, fresh=True)
    try:
        stream_runner.wait_idle(settings, half + len(MALFORMED), timeout_s=240)
        rest = threading.Thread(target=produce_rest)
        rest.start()
        time.sleep(1.0)
        m = totals(metrics_dir(settings))
        killed_at = records_read(m)
        stream_runner.stop(settings, kill=True)
        rest.join()
        _, restored_from = stream_runner.start(settings)
        stream_runner.wait_idle(settings, total, timeout_s=400)

        # then one event beyond the allowed lateness and one out of order but within it
        lake = read_events(settings.paths.events_table).to_pandas()
        # lateness is per partition (its max event time - out_of_orderness - allowed_lateness):
        # below every partition's threshold is late wherever the user lands; above all of them is not
        per_partition_max = lake.groupby("kafka_partition")["event_time"].max()
        slack = settings.stream.out_of_orderness_ms + settings.stream.allowed_lateness_ms
        extra = [
            {"event_id": "late-1", "user_id": "late-user", "item_id": "late-item", "event_type": "click",
             "event_time": int(per_partition_max.min() - slack - 86_400_000)},
            {"event_id": "ooo-1", "user_id": "ooo-user", "item_id": "ooo-item", "event_type": "click",
             "event_time": int(per_partition_max.max() - slack // 2)},
        ]
        with EventProducer(settings) as producer:
            producer.send_many(extra)
        metrics = stream_runner.wait_idle(settings, total + len(extra), timeout_s=120)
    finally:
        stream_runner.stop(settings)
    yield {"settings": settings, "events": events, "killed_at": killed_at, "restored_from": restored_from,
           "metrics": metrics, "total": total}


def test_crash_restart_lands_every_valid_event_exactly_once(run):
    assert N_EVENTS // 2 < run["killed_at"] < run["total"], "the job was not killed mid-stream"
    assert run["restored_from"] is not None, "restart did not resume from a checkpoint"
    # writes lost with the killed job (staged, or with its writer process) are redone from the
    # restored states, or entities not seen again would keep stale features
    assert run["metrics"]["restore_rewrites"] > 0
    lake = read_events(run["settings"].paths.events_table).to_pandas()
    assert len(lake) == N_EVENTS + 2
    assert lake["event_id"].is_unique
    expected = {e.event_id for e in run["events"]} | {"late-1", "ooo-1"}
    assert set(lake["event_id"]) == expected
    assert set(lake["event_date"]) == {d for d in pd.to_datetime(lake["event_time"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")}


def test_malformed_records_go_to_the_dlq_with_reasons(run):
    s = run["settings"]
    scan = scan_topic(s, s.topics.dlq)
    expected = set()
    for bad in MALFORMED:
        with pytest.raises(InvalidEvent) as err:
            decode_event(bad)
        expected.add(err.value.reason)
    assert scan.records >= len(MALFORMED)  # at-least-once: a replay after the crash may repeat one
    assert set(scan.reasons) == expected


def test_late_event_is_counted_kept_in_lake_and_out_of_features(run):
    s = run["settings"]
    assert run["metrics"].get("late") == 1
    lake = read_events(s.paths.events_table).to_pandas().set_index("event_id")
    assert bool(lake.loc["late-1", "late"]) and not bool(lake.loc["ooo-1", "late"])
    users = read_online(s, names.USER_STATS, "user_id", ["late-user", "ooo-user"])
    assert users.loc["ooo-user", "n_click"] == 1
    assert pd.isna(users.loc["late-user", "n_click"])


def test_features_equal_an_independent_pandas_computation(run):
    s = run["settings"]
    df = pd.DataFrame([e.model_dump() for e in run["events"]])
    df["event_type"] = df["event_type"].astype(str)
    users = sorted(df["user_id"].unique())
    online = read_online(s, names.USER_STATS, "user_id", users)
    by_user = df.groupby("user_id")
    assert (online.loc[users, "n_events"].astype(int) == by_user.size().loc[users]).all()
    assert (online.loc[users, "n_rating"].astype(int) == by_user.size().loc[users]).all()
    assert (online.loc[users, "last_seen_ms"].astype(int) == by_user["event_time"].max().loc[users]).all()
    pd.testing.assert_series_equal(online.loc[users, "avg_rating"].astype(float), by_user["value"].mean().loc[users],
                                   check_names=False, rtol=1e-9)

    recent = read_online(s, names.USER_RECENT, "user_id", users)
    n = s.features.recent_items
    for user, group in by_user:
        want = group.sort_values(["event_time", "event_id"], ascending=False).head(n)
        assert list(recent.loc[user, "recent_items"]) == list(want["item_id"]), user
        assert list(recent.loc[user, "recent_times_ms"]) == list(want["event_time"]), user

    items = sorted(df["item_id"].unique())
    item_stats = read_online(s, names.ITEM_STATS, "item_id", items)
    assert (item_stats.loc[items, "n_events"].astype(int) == df.groupby("item_id").size().loc[items]).all()

    popularity = read_online(s, names.ITEM_POPULARITY, "item_id", items)
    latest = df.groupby("item_id")["event_time"].max()
    for w in s.features.windows:
        end = (latest // (w.slide_s * 1000) + 1) * (w.slide_s * 1000)
        start = (end - w.size_s * 1000).rename("start")
        joined = df.join(start, on="item_id")
        in_window = joined[(joined["event_time"] >= joined["start"]) & (joined["event_time"] < joined["item_id"].map(end))]
        want = in_window.groupby("item_id").size().reindex(items, fill_value=0)
        assert (popularity.loc[items, f"pop_{w.name}"].astype(int) == want).all(), w.name


def test_batch_backfill_equals_streamed_features(run):
    s = run["settings"]
    result = backfill(s, progress=False)
    assert result.late_skipped == 1
    assert_online_equals_backfill(s, result)


def test_two_stage_graph_for_parallelism_above_one(stack_settings, tmp_path, ml100k_path):
    """parallelism > 1 runs users and items in separate keyed stages (the cluster layout)."""
    s = isolated(stack_settings, tmp_path, parallelism=2, lake_flush_ms=500)
    apply(s)
    events = load_events(ml100k_path).events[:3000]
    with EventProducer(s) as producer:
        producer.send_many(events)
    pid, _ = stream_runner.start(s, fresh=True)
    try:
        assert stream_runner.start(s) == (pid, None)  # a second start is harmless
        metrics = stream_runner.wait_idle(s, len(events), timeout_s=300)
        live = stream_runner.status(s)
        assert live.running and live.pid == pid and live.metrics["events_in"] == len(events)
        assert set(live.lag) == set(range(s.topics.events_partitions))
    finally:
        stream_runner.stop(s)
    assert not stream_runner.status(s, with_lag=False).running
    assert {p.stem.split("-")[0] for p in metrics_dir(s).glob("*.json")} == {"partition", "items", "writer"}
    # the item stage knows the Kafka time of what it writes (its catch-up writes depend on it)
    item_writes = [m for name, m in read_all(metrics_dir(s)).items()
                   if name.startswith(("items-", "writer-items-")) and m.get("online_rows")]
    assert item_writes and all(0 <= m["write_delay_ms"] < 600_000 for m in item_writes)
    assert metrics["lake_rows"] == len(events)
    assert_online_equals_backfill(s, backfill(s, progress=False))


def test_status_reports_metrics_and_checkpoint(run):
    st = stream_runner.status(run["settings"])
    assert not st.running and st.latest_checkpoint is not None
    assert st.metrics["events_in"] > 0 and st.metrics["online_batches"] > 0
    assert Path(st.latest_checkpoint, "_metadata").is_file()
    # produce -> written, from Kafka record timestamps; the last write is after the first batch
    assert 0 <= st.metrics["write_delay_ms"] < 600_000
    assert st.metrics["last_write_at"] >= st.metrics["first_batch_at"]


def test_feature_function_moves_old_objects_out_of_the_cyclic_gc(stack_settings):
    """Full collections walk every live feature state (a 225 ms stall at 5k users); the job
    freezes survivors of a young collection instead, at most every gc_freeze_every_ms."""
    import gc

    from streaming.job.feature_functions import PartitionFunction

    fn = PartitionFunction(stack_settings)
    fn.stream, fn._frozen_at = stack_settings.stream.model_copy(update={"gc_freeze_every_ms": 1000}), 0.0
    gc.unfreeze()
    try:
        states = [{"user": i, "recent": [i]} for i in range(10_000)]
        fn._freeze_old_objects()
        frozen = gc.get_freeze_count()
        assert frozen >= len(states)
        more = [[i] for i in range(10_000)]
        fn._freeze_old_objects()  # within the interval: nothing more frozen
        assert gc.get_freeze_count() == frozen
        fn._frozen_at = 0.0
        fn._freeze_old_objects()
        assert gc.get_freeze_count() >= frozen + len(more)
        fn.stream, fn._frozen_at = stack_settings.stream.model_copy(update={"gc_freeze_every_ms": 0}), 0.0
        gc.unfreeze()
        fn._freeze_old_objects()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_writes_wait_longer_only_while_the_job_is_behind(stack_settings):
    from streaming.job.feature_functions import PartitionFunction

    fn = PartitionFunction(stack_settings)
    fn.stream = stack_settings.stream.model_copy(update={"online_flush_ms": 0, "catch_up_flush_ms": 500})
    now_ms = int(time.time() * 1000)
    fn._oldest_pending_ms = None
    assert fn._write_wait_ms() == 0
    fn._oldest_pending_ms = now_ms - 200  # fresh records: written after this micro-batch
    assert fn._write_wait_ms() == 0
    fn._last_input_at = time.monotonic()
    fn._oldest_pending_ms = now_ms - 5_000  # catching up while records keep coming: coalesce for up to 500 ms
    assert fn._write_wait_ms() == 500
    fn._last_input_at = time.monotonic() - fn._drain_ms() / 1000  # behind, but the input stopped: write now
    assert fn._write_wait_ms() == 0
    fn._last_input_at = time.monotonic()
    fn.stream = fn.stream.model_copy(update={"catch_up_flush_ms": 0})
    assert fn._write_wait_ms() == 0


JOB_GRAPH_FILE = Path(__file__).parent / "data" / "feature_job_graph.json"


def _job_graph(settings) -> list[list]:
    """(operator ids, parallelism, max parallelism) per task of the job graph, as Flink matches
    checkpoint state to operators on restore."""
    from streaming.job.feature_job import build

    job_graph = build(settings)._j_stream_execution_environment.getStreamGraph(False).getJobGraph()
    vertices, it = [], job_graph.getVertices().iterator()
    while it.hasNext():
        v = it.next()
        ops = v.getOperatorIDs()
        vertices.append([sorted(str(ops.get(i).getGeneratedOperatorID()) for i in range(ops.size())),
                         v.getParallelism(), v.getMaxParallelism()])
    return sorted(vertices)


def test_the_job_graph_stays_restorable(stack_settings, tmp_path):
    """A checkpoint restores only into a job graph with the same operators (ids, max parallelism):
    grouping the fused stage's micro-batch across partitions once made `recsys stream start`
    fail after an upgrade ("Max parallelism mismatch"). A deliberate change of the graph updates
    this file (RECSYS_UPDATE_JOB_GRAPH=1) and tells users to start fresh in the release notes."""
    import json
    import os

    from features.store import apply

    graphs = {}
    for parallelism in (1, 2):
        settings = stack_settings.model_copy(update={
            "data_dir": tmp_path / f"p{parallelism}",
            "stream": stack_settings.stream.model_copy(update={"parallelism": parallelism})})
        apply(settings)
        graphs[str(parallelism)] = _job_graph(settings)
    if os.environ.get("RECSYS_UPDATE_JOB_GRAPH"):
        JOB_GRAPH_FILE.write_text(json.dumps(graphs, indent=1) + "\n")
    expected = json.loads(JOB_GRAPH_FILE.read_text())
    assert graphs == expected, (
        f"the feature job's graph changed ({JOB_GRAPH_FILE} has the released one): checkpoints of the previous "
        "version will not restore into it. Keep operator uids and keyed aggregates as they were, or, if the change "
        "is deliberate, rerun with RECSYS_UPDATE_JOB_GRAPH=1 and document that upgrading needs `recsys stream start --fresh`"
    )
