"""Synthetic interaction logs with the structure recommendation depends on, at any size.

For scale runs (``bench/scale.py``) a log must behave like a real one, or the costs measured are
not the costs a user meets: a few items and users carry most events (Zipf), people act in
sessions, each person prefers a few categories and those preferences drift, and new items
arrive all the time. The generator:

- **items** get a category (Zipf over categories), a popularity weight (Zipf) and a launch time:
  ``initial_items`` of them exist on day 0, the rest arrive evenly over the period, and an item is
  never drawn before its launch;
- **users** are drawn per session by activity (Zipf); each has two favourite categories, which
  change every ``drift_days`` (a stable hash of the user and the period, so no state per user);
- **sessions** (geometric length, mean ``session_length``, events ``session_gap_s`` apart on
  average) draw each event's category from the user's favourites (``taste`` of the time) or the
  whole catalogue, then an item of that category by popularity among those launched;
- **event types** follow a funnel: view, click, add to cart, purchase.

The log is written one day at a time, sorted by event time, so memory is bounded by a day's
events whatever the size. Same arguments + seed -> the same file.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> log = SyntheticLog(n_events=2_000, n_users=300, n_items=200, n_categories=8, days=4)
>>> log.write(out / "events.parquet", out / "items.parquet")
2000
>>> import pyarrow.parquet as pq
>>> t = pq.read_table(out / "events.parquet")
>>> t.num_rows, t.column_names
(2000, ['user_id', 'item_id', 'event_type', 'event_time'])
>>> times = t.column("event_time").to_pylist(); times == sorted(times)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from streaming.events import DAY_MS
from streaming.synthetic import zipf_probabilities

FUNNEL = {"view": 0.62, "click": 0.24, "add_to_cart": 0.09, "purchase": 0.05}
START_MS = 1_700_000_000_000  # 2023-11-14: any fixed epoch; the log's first day
EVENT_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
                          ("event_time", pa.int64())])


@dataclass
class SyntheticLog:
    n_events: int = 1_000_000
    n_users: int = 100_000
    n_items: int = 20_000
    n_categories: int = 50
    days: int = 60
    initial_items: float = 0.6  # share of the catalogue launched on day 0
    zipf_exponent: float = 1.0
    session_length: float = 6.0
    session_gap_s: float = 40.0
    taste: float = 0.8  # share of events in the user's favourite categories
    drift_days: float = 21.0  # favourites change this often (per user, staggered)
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = self.n_items
        self.item_category = rng.choice(self.n_categories, size=n, p=zipf_probabilities(self.n_categories, 0.8))
        self.item_weight = rng.permutation(zipf_probabilities(n, self.zipf_exponent))
        launched_later = rng.random(n) >= self.initial_items
        self.item_launch = np.where(launched_later, rng.integers(0, self.days * DAY_MS, size=n), 0)
        # per category: its items in launch order, with the running sum of their weights
        self._by_category = []
        for c in range(self.n_categories):
            mine = np.flatnonzero(self.item_category == c)
            mine = mine[np.argsort(self.item_launch[mine], kind="stable")]
            self._by_category.append((mine, self.item_launch[mine], np.cumsum(self.item_weight[mine])))
        self._user_cdf = np.cumsum(zipf_probabilities(self.n_users, self.zipf_exponent))
        self._category_p = np.bincount(self.item_category, weights=self.item_weight, minlength=self.n_categories)
        self._category_p /= self._category_p.sum()
        self._types = np.array(list(FUNNEL))
        self._type_p = np.array(list(FUNNEL.values())) / sum(FUNNEL.values())

    def favourites(self, users: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """(n, 2) favourite categories of each user at each time: a stable hash of (user, period)."""
        offset = (users * 2654435761) % int(self.drift_days * DAY_MS)  # staggered: not everyone drifts at once
        period = (t_ms + offset) // int(self.drift_days * DAY_MS)
        mixed = (users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + period.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
                 + np.uint64(self.seed)) & np.uint64(0xFFFFFFFF)
        first = mixed % np.uint64(self.n_categories)
        second = (mixed // np.uint64(self.n_categories) + np.uint64(1)) % np.uint64(self.n_categories)
        return np.stack([first, second], axis=1).astype(np.int64)

    def day(self, d: int) -> pa.Table:
        """The events of the sessions that start on day ``d`` (a late one runs past midnight), sorted."""
        rng = np.random.default_rng((self.seed, d))
        n = self.n_events // self.days + (1 if d < self.n_events % self.days else 0)
        lengths = rng.geometric(1.0 / self.session_length, size=max(1, int(n / self.session_length * 1.2)))
        lengths = lengths[np.cumsum(lengths) <= n]
        if lengths.sum() < n:
            lengths = np.append(lengths, n - lengths.sum())
        sessions = len(lengths)
        users = np.searchsorted(self._user_cdf, rng.random(sessions) * self._user_cdf[-1])
        starts = START_MS + d * DAY_MS + rng.integers(0, DAY_MS, size=sessions)
        session_of = np.repeat(np.arange(sessions), lengths)
        step = rng.exponential(self.session_gap_s * 1000, size=n).astype(np.int64) + 1
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        within = np.cumsum(step) - np.repeat(np.cumsum(step)[first] - step[first], lengths)
        times = starts[session_of] + within
        user = users[session_of]
        liked = self.favourites(user, times - START_MS)
        category = np.where(rng.random(n) < self.taste, liked[np.arange(n), rng.integers(0, 2, size=n)],
                            rng.choice(self.n_categories, size=n, p=self._category_p))
        items = np.empty(n, dtype=np.int64)
        for c in np.unique(category):
            rows = np.flatnonzero(category == c)
            mine, launch, cum = self._by_category[c]
            if not len(mine):
                items[rows] = rng.choice(self.n_items, size=len(rows), p=self.item_weight / self.item_weight.sum())
                continue
            live = np.maximum(np.searchsorted(launch, times[rows] - START_MS, side="right"), 1)  # launched so far
            items[rows] = mine[np.minimum(np.searchsorted(cum, rng.random(len(rows)) * cum[live - 1]), live - 1)]
        order = np.argsort(times, kind="stable")
        types = self._types[rng.choice(len(self._types), size=n, p=self._type_p)]
        return pa.table({"user_id": pa.array((user[order]).astype(str)), "item_id": pa.array(items[order].astype(str)),
                         "event_type": pa.array(types[order]), "event_time": pa.array(times[order])}, schema=EVENT_SCHEMA)

    def write(self, events_path: Path, items_path: Path | None = None, progress: bool = False) -> int:
        """The log (Parquet, one row group per day) and, with ``items_path``, the catalogue
        (``item_id``, ``title``, ``category``); returns the events written."""
        written = 0
        spill = EVENT_SCHEMA.empty_table()  # sessions that ran past midnight: written with the next day
        with pq.ParquetWriter(events_path, EVENT_SCHEMA) as writer:
            for d in tqdm(range(self.days), desc="synthetic log", unit="day", disable=None if progress else True):
                table = pa.concat_tables([spill, self.day(d)]).sort_by("event_time")
                if d < self.days - 1:
                    cut = int(np.searchsorted(table.column("event_time").to_numpy(), START_MS + (d + 1) * DAY_MS))
                    table, spill = table.slice(0, cut), table.slice(cut)
                writer.write_table(table)
                written += table.num_rows
        if items_path is not None:
            ids = np.arange(self.n_items).astype(str)
            pq.write_table(pa.table({"item_id": ids, "title": [f"item {i}" for i in ids],
                                     "category": [f"c{c}" for c in self.item_category]}), items_path)
        return written
