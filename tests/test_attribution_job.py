"""The live attribution job (PyFlink) against the real broker, Redis and Delta Lake.

Served lists go to the impressions topic and events to the events topic (and to the events
table, as the feature job lands them: tests/test_stream_features.py tests that); the attribution
job counts into Redis and lands the impressions in the lake. The job is killed with SIGKILL halfway and restarted from its checkpoint. Checked: the
counts in Redis equal the batch join (batch.attribution) of the two lake tables, exactly; every
list is in the impressions table once.
"""

from __future__ import annotations

import time

import orjson
import pytest

from batch.attribution import by_version, lake_events, lake_impressions
from infra import kafka_clients
from streaming.attribution_counts import AttributionCounts
from streaming.job import attribution_runner
from streaming.lake import LakeWriter
from streaming.producer import EventProducer
from tests.attribution_traffic import ENGAGING, WINDOW, traffic
from tests.conftest import isolated

T0 = 1_700_000_000_000
pytestmark = pytest.mark.timeout(600)


def _send_lists(settings, lists: list[dict]) -> None:
    raw = kafka_clients.producer(settings, "test-impressions")
    for rec in lists:
        raw.send(settings.topics.impressions, key=rec["user_id"].encode(), value=orjson.dumps(rec))
    raw.flush()
    raw.close()


def _send_events(settings, events: list[dict], first_offset: int) -> None:
    with EventProducer(settings) as producer:
        producer.send_many(events)
    LakeWriter.for_settings(settings).append(0, [(e["event_id"], e["user_id"], e["item_id"], e["event_type"], None,
                                                  e["event_time"], None, 0, first_offset + n, False, 0)
                                                 for n, e in enumerate(events)])


def test_streamed_counts_equal_the_batch_join_of_the_lake_across_a_crash(stack_settings, tmp_path_factory) -> None:
    settings = isolated(stack_settings, tmp_path_factory.mktemp("attribution"), checkpoint_interval_ms=1000,
                        lake_flush_ms=1000)
    settings = settings.model_copy(update={"attribution": settings.attribution.model_copy(update={
        "window_s": WINDOW / 1000, "event_types": list(ENGAGING), "lake_commit_every_s": 1.0})})
    lists, events = traffic(11, n_lists=400, t0=T0)
    events.sort(key=lambda e: e["event_time"])  # each topic in time order: nothing is late
    half_l, half_e = len(lists) // 2, len(events) // 2
    _send_lists(settings, lists[:half_l])
    _send_events(settings, events[:half_e], 0)
    attribution_runner.start(settings, fresh=True)
    try:
        attribution_runner.wait_read(settings, half_l, half_e, timeout_s=180)
        time.sleep(2.5)  # past a checkpoint
        attribution_runner.stop(settings, kill=True)  # SIGKILL: whatever was not checkpointed is replayed
        _send_lists(settings, lists[half_l:])
        _send_events(settings, events[half_e:], half_e)
        _, restored_from = attribution_runner.start(settings)
        assert restored_from is not None
        attribution_runner.wait_read(settings, len(lists), len(events), timeout_s=180)  # counters go on across restarts
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the impressions table is committed every second
            try:
                if lake_impressions(settings.paths.impressions_table)["request_id"].nunique() == len({r["request_id"] for r in lists}):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.5)
    finally:
        attribution_runner.stop(settings)
    shown = lake_impressions(settings.paths.impressions_table)
    assert shown["request_id"].nunique() == len({r["request_id"] for r in lists})
    assert len(shown) == 5 * shown["request_id"].nunique()  # each list's five items once
    batch = by_version(shown, lake_events(settings.paths.events_table), WINDOW, ENGAGING)
    live = {(t.version, t.arm): t for t in AttributionCounts.for_settings(settings).all()}
    assert set(live) == {(r.model_version, r.arm) for r in batch.itertuples()}
    for row in batch.itertuples():
        t = live[(row.model_version, row.arm)]
        assert (t.lists, t.hits, t.shown, t.engaged) == (row.lists, row.hits, row.shown, row.engaged), row
    assert batch["engaged"].sum() > 50
    assert attribution_runner.status(settings).metrics.get("late", 0) == 0
