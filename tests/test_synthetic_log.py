"""The synthetic log has the structure it promises: Zipf items, sessions with a taste, drift,
no item before its launch, bounded days, the same file for the same seed."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from streaming.replay import load_events
from streaming.synthetic_log import START_MS, SyntheticLog


def test_the_log_has_the_structure_recommendation_depends_on(tmp_path):
    log = SyntheticLog(n_events=60_000, n_users=5_000, n_items=3_000, n_categories=20, days=30, drift_days=10)
    assert log.write(tmp_path / "e.parquet", tmp_path / "i.parquet") == 60_000
    df = pq.read_table(tmp_path / "e.parquet").to_pandas()
    items = df["item_id"].astype(int).to_numpy()
    t = df["event_time"].to_numpy() - START_MS
    assert (np.diff(df["event_time"].to_numpy()) >= 0).all()
    assert (t >= log.item_launch[items]).all()  # never an item before its launch
    assert (log.item_launch > 0).mean() > 0.3 and df["item_id"].nunique() > 0.5 * log.n_items  # new items arrive, and are used
    counts = df["item_id"].value_counts().to_numpy()
    assert counts[: len(counts) // 100].sum() > 0.1 * len(df)  # the top 1% of items carry far more than 1%
    category = log.item_category[items]
    users = df["user_id"].astype(int).to_numpy()
    liked = log.favourites(users, t)
    in_taste = ((category == liked[:, 0]) | (category == liked[:, 1])).mean()
    assert in_taste > 0.75  # most events are in the user's favourites of the time ...
    later = log.favourites(users, t + int(log.drift_days * 86_400_000))
    assert (liked != later).any(axis=1).mean() > 0.5  # ... which drift
    again = SyntheticLog(n_events=60_000, n_users=5_000, n_items=3_000, n_categories=20, days=30, drift_days=10)
    again.write(tmp_path / "again.parquet")
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "e.parquet"))
    loaded = load_events(tmp_path / "e.parquet")  # the replay reads it as it is (field names, ms times)
    assert len(loaded.events) == 60_000 and not loaded.rejected and loaded.time_unit.startswith("ms")
