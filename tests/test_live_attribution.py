"""Live attribution counts exactly what the batch join counts, record by record, whatever order
the two streams interleave in (within the lateness bound); duplicates count once; state is
dropped without losing a match; the counts land in Redis and read back."""

from __future__ import annotations

import random

import pytest

from batch.attribution import by_source_and_position, by_version, events_frame, impressions_frame
from streaming.attribution_counts import AttributionCounts, RunningTotals
from streaming.live_attribution import LiveAttribution, source_field
from tests.attribution_traffic import ENGAGING, WINDOW, traffic as _traffic

def _stream(imps: list[dict], events: list[dict], seed: int) -> list[tuple[str, dict]]:
    """Both streams interleaved by time, shuffled within a small slack (as two topics arrive)."""
    rng = random.Random(seed)
    records = [("imp", r, r["event_clock_ms"]) for r in imps] + [("ev", e, e["event_time"]) for e in events]
    records.sort(key=lambda x: x[2] + rng.uniform(0, 300))
    return [(kind, r) for kind, r, _ in records]


def _live_totals(stream: list[tuple[str, dict]], slack_ms: int, expire_every: int = 25) -> dict:
    live = LiveAttribution(WINDOW, ENGAGING, slack_ms)
    totals: dict = {}
    for n, (kind, r) in enumerate(stream):
        incs = live.impression(r, partition=0) if kind == "imp" else live.event(r, partition=1)
        for inc in incs:
            key = (inc.version, inc.arm, inc.field)
            totals[key] = totals.get(key, 0) + inc.amount
        if n % expire_every == 0:
            live.expire()
    return totals, live


@pytest.mark.parametrize("seed", range(6))
def test_live_counts_equal_the_batch_join(seed: int) -> None:
    imps, events = _traffic(seed)
    totals, live = _live_totals(_stream(imps, events, seed), slack_ms=1_000)
    assert live.late == 0
    shown, evs = impressions_frame(imps), events_frame(events)
    batch = by_version(shown, evs, WINDOW, ENGAGING)
    assert len(batch) >= 6
    for row in batch.itertuples():
        for name in ("lists", "shown", "engaged", "hits"):
            assert totals.get((row.model_version, row.arm, name), 0) == getattr(row, name), (row, name)
    per_source = by_source_and_position(shown, evs, WINDOW, ENGAGING)
    for row in per_source.itertuples():
        for what in ("shown", "engaged"):
            assert totals.get((row.model_version, row.arm, source_field(row.source, row.position, what)), 0) == getattr(row, what)
    assert sum(v for (_, _, f), v in totals.items() if f == "engaged") > 50  # the check has teeth


def test_state_is_dropped_once_nothing_can_match_it() -> None:
    imps, events = _traffic(0, n_lists=600)
    _, live = _live_totals(_stream(imps, events, 0), slack_ms=1_000, expire_every=1)
    live.expire()
    kept = sum(len(u.lists) for u in live.users.values())
    horizon = live.horizon()
    assert horizon >= max(live.newest.values()) - WINDOW - 1_000
    assert kept < 100  # of 600 lists: only those whose window is still open
    assert all(s.shown_at + WINDOW >= horizon for u in live.users.values() for s in u.lists)


def test_late_records_are_counted_and_not_attributed() -> None:
    live = LiveAttribution(WINDOW, ENGAGING, slack_ms=100)
    imp = {"request_id": "r", "user_id": "u", "model_version": "v", "arm": None, "served_at_ms": 0, "event_clock_ms": 5_000,
           "items": [{"item_id": "a", "position": 0, "sources": ["similar"]}]}
    assert live.impression(imp, 0)
    assert live.event({"event_id": "x", "user_id": "u", "item_id": "b", "event_type": "click", "event_time": 9_000}, 0) == []
    late = {"event_id": "y", "user_id": "u", "item_id": "a", "event_type": "click", "event_time": 6_000}  # 3 s behind
    assert live.event(late, 0) == [] and live.late == 1


def test_counts_land_in_redis_and_read_back(settings) -> None:
    counts = AttributionCounts.for_settings(settings.model_copy(update={"features": settings.features.model_copy(
        update={"project": "attr_test"})}))
    counts.clear()
    imps, events = _traffic(3)
    live = LiveAttribution(WINDOW, ENGAGING, 1_000)
    shards = [RunningTotals(), RunningTotals()]  # two job shards, each writing its own totals
    for n, (kind, r) in enumerate(_stream(imps, events, 3)):
        shards[n % 2].apply(live.impression(r, 0) if kind == "imp" else live.event(r, 1))
        if n % 7 == 0:
            counts.write(n % 2, shards[n % 2], now_ms=123)
    for shard, running in enumerate(shards):
        counts.write(shard, running, now_ms=123)
        running.changed = set(running.totals)
        counts.write(shard, running, now_ms=123)  # written again (a restored job replaying): the same totals
    batch = by_version(impressions_frame(imps), events_frame(events), WINDOW, ENGAGING)
    got = {(t.version, t.arm): t for t in counts.all()}
    assert set(got) == {(r.model_version, r.arm) for r in batch.itertuples()}
    for row in batch.itertuples():
        t = got[(row.model_version, row.arm)]
        assert (t.lists, t.hits, t.shown, t.engaged) == (row.lists, row.hits, row.shown, row.engaged)
        assert abs(t.users - row.users) <= max(1, 0.02 * row.users)  # a HyperLogLog
        assert t.updated_at_ms == 123 and sum(s for s, _ in t.by_source.values()) >= t.shown
    counts.clear()
    assert counts.all() == []


def test_a_stream_read_behind_the_other_still_finds_its_partners() -> None:
    # all engaging events first, then the lists they engage (one topic read ahead of the other, by
    # less than a window of event time): the sweep must keep the events for the lists to claim
    live = LiveAttribution(WINDOW, ENGAGING, slack_ms=0)
    imp = {"request_id": "r", "user_id": "u", "model_version": "v", "arm": None, "served_at_ms": 0, "event_clock_ms": 1_000,
           "items": [{"item_id": "a", "position": 0, "sources": ["similar"]}]}
    live.event({"event_id": "x", "user_id": "u", "item_id": "a", "event_type": "click", "event_time": 1_500}, 1)
    live.event({"event_id": "y", "user_id": "w", "item_id": "b", "event_type": "click", "event_time": 1_000 + WINDOW // 2}, 1)
    live.expire()
    assert "engaged" in [i.field for i in live.impression(imp, 0)]
