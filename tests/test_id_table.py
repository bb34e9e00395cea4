"""Managed id tables on a synthetic stream with churn: bounded, collision-free for the hot set."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from models.config import ModelSettings
from models.id_table import SHARED_ROW, ManagedIds, ModelIds, model_ids
from streaming.events import DAY_MS


def _churning_stream(days: int = 60, per_day: int = 3000, cohort: int = 400, seed: int = 0):
    """Each day a new cohort of ids becomes active (Zipf within it) and older cohorts fade."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, cohort + 1) ** 1.1
    weights /= weights.sum()
    for day in range(days):
        for n in range(per_day):
            age = min(int(rng.exponential(2.0)), day)  # mostly today's cohort, some from recent days
            yield f"c{day - age}-{rng.choice(cohort, p=weights)}", day * DAY_MS + n * (DAY_MS // per_day)


def test_frequency_filter_and_expiry_bound_the_table_under_churn():
    ttl_days, capacity, min_count = 7, 2000, 3
    ids = ManagedIds(capacity=capacity, min_count=min_count, ttl_ms=ttl_days * DAY_MS)
    counts: Counter = Counter()
    last: dict[str, int] = {}
    recent = defaultdict(Counter)  # day -> occurrences that day
    peak = 0
    for i, (entity, t) in enumerate(_churning_stream()):
        counts[entity] += 1
        last[entity] = t
        recent[t // DAY_MS][entity] += 1
        ids.observe(entity, t)
        if i % 3000 == 2999:  # expire once a day, as the learner does at each publish
            ids.expire(t)
            peak = max(peak, len(ids))
    now = max(last.values())
    ids.expire(now)
    assert len(counts) > 9 * capacity  # far more ids than rows over the stream ...
    assert 0 < peak <= capacity - 1  # ... yet never more rows than the table has (row 0 is shared)
    rows = list(ids.row_of.values())
    assert len(rows) == len(set(rows)) and SHARED_ROW not in rows  # one id per row: no collisions
    assert all(counts[e] >= min_count for e in ids.row_of)  # the frequency filter
    assert all(now - last[e] <= ttl_days * DAY_MS for e in ids.row_of)  # expiry
    assert all(now - t <= ttl_days * DAY_MS for _, t in ids.waiting.values())  # waiting ids are forgotten too
    hot = {e for e, n in sum((recent[d] for d in range(now // DAY_MS - 2, now // DAY_MS + 1)), Counter()).items() if n >= 20}
    assert hot and hot <= set(ids.row_of)  # every id that is hot now has its own row


def test_ids_survive_a_save_and_load(tmp_path):
    cfg = ModelSettings(ids="managed", user_buckets=50, item_buckets=40, id_min_count=2, id_ttl_days=1.0)
    mapping = model_ids(cfg)
    assert isinstance(mapping, ModelIds) and mapping.managed
    for t, (u, i) in enumerate([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "c")]):
        mapping.users.observe(u, t)
        mapping.items.observe(i, t)
    mapping.save(tmp_path)
    loaded = model_ids(cfg, tmp_path)
    assert loaded.users.row_of == mapping.users.row_of == {"u1": 1}
    assert loaded.items.row_of == mapping.items.row_of == {"a": 1}
    assert loaded.items.waiting == mapping.items.waiting  # "b" and "c" keep their counts
    assert loaded.items.observe("b", 10) == 2  # the next free row, as if it had never been saved
    assert loaded.users.rows(["u1", "nobody"]).tolist() == [1, SHARED_ROW]
