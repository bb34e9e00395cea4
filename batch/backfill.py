"""Batch backfill: the streaming features recomputed from the Delta ``events`` table.

Same definitions, same code (features.compute), same order as the stream job saw the events
(per Kafka partition in offset order; late events excluded, as the job excludes them), so the
result equals what the job wrote to Redis: that equality is the batch/stream parity check that
keeps training and serving from drifting apart. The result can re-seed the online store and is
written as Feast offline snapshots (one row per entity, timestamped at its last event).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from batch.feature_history import FeatureHistory
from features import names
from features.compute import InMemoryFeatures, ItemState, UserState, view_values
from features.definitions import TIMESTAMP_FIELD, snapshot_table
from infra.settings import Settings
from streaming.lake import open_table


@dataclass
class Backfill:
    table_version: int
    events: int
    late_skipped: int
    users: dict[str, UserState] = field(repr=False)
    items: dict[str, ItemState] = field(repr=False)
    user_time: dict[str, int] = field(repr=False)
    item_time: dict[str, int] = field(repr=False)
    next_offsets: dict[int, int] = field(default_factory=dict)  # per Kafka partition: the offset after the last row read
    max_event_time: dict[int, int] = field(default_factory=dict)  # per Kafka partition: what the stream job's lateness rule starts from

    def frames(self, settings: Settings) -> dict[str, pd.DataFrame]:
        """One DataFrame per feature view: entity id, features, event_timestamp."""
        cfg = settings.features

        def frame(view: str, key: str, states: dict, times: dict[str, int]) -> pd.DataFrame:
            rows = [{key: k, **view_values(cfg, view, s), TIMESTAMP_FIELD: _ts(times[k])} for k, s in states.items()]
            return pd.DataFrame(rows)

        active = {k: s for k, s in self.items.items() if s.latest_ms >= 0}
        return {
            names.USER_STATS: frame(names.USER_STATS, names.USER_KEY, self.users, self.user_time),
            names.USER_RECENT: frame(names.USER_RECENT, names.USER_KEY, self.users, self.user_time),
            names.ITEM_STATS: frame(names.ITEM_STATS, names.ITEM_KEY, active, self.item_time),
            names.ITEM_POPULARITY: frame(names.ITEM_POPULARITY, names.ITEM_KEY, active, self.item_time),
            names.ITEM_COVISIT: frame(names.ITEM_COVISIT, names.ITEM_KEY, {k: s for k, s in self.items.items() if s.covisit},
                                      self.item_time),
        }


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def compute(settings: Settings, version: int | None = None, progress: bool = True,
            history: FeatureHistory | None = None, below: dict[int, int] | None = None,
            epoch: str | None = None) -> Backfill:
    """Fold the events table (at ``version``, default latest) through the feature definitions;
    with ``below``, only the rows whose Kafka offset is below ``below[partition]``.

    With ``epoch`` (the current topic incarnation, ``streaming.lake.topic_epoch``), ``below`` and
    ``next_offsets`` concern that incarnation's rows only: rows landed from an earlier incarnation
    of the topic are all folded, and their offsets say nothing about the current topic.

    Without ``history`` the fold follows the job's order (per partition, by offset): the final
    values equal the streamed ones. With it, the fold follows event time and hands every event's
    entities to ``history`` (:class:`batch.feature_history.FeatureHistory`), which writes the
    throttled history Feast joins point-in-time for training to Parquet as it goes.
    """
    table = open_table(settings.paths.events_table, version)
    cols = ["event_id", "user_id", "item_id", "event_type", "value", "event_time", "kafka_partition", "kafka_offset", "late"]
    order = ["kafka_partition", "kafka_offset"] if history is None else ["event_time", "kafka_partition", "kafka_offset"]
    has_epoch = "topic_epoch" in {f.name for f in table.schema().fields}
    df = table.to_pandas(columns=cols + ["ingest_time", "topic_epoch"] * has_epoch)
    if has_epoch and df["topic_epoch"].nunique(dropna=False) > 1:  # offsets restart per incarnation: oldest first
        first_seen = df.groupby("topic_epoch", dropna=False)["ingest_time"].transform("min")
        df = df.assign(_incarnation=first_seen)
        order = ["_incarnation"] + order if history is None else order
    df = df.sort_values(order, kind="stable")
    if epoch is not None and has_epoch:
        current = df["topic_epoch"] == epoch  # rows of an earlier incarnation: offsets of another topic
    else:
        current = pd.Series(True, index=df.index)
    if below is not None:
        df = df[~current | (df["kafka_offset"] < df["kafka_partition"].map(lambda p: below.get(int(p), 0)))]
    by_partition = df[current[df.index]].groupby("kafka_partition")  # late rows too: they were read
    next_offsets = {int(p): int(o) + 1 for p, o in by_partition["kafka_offset"].max().items()}
    max_event_time = {int(p): int(t) for p, t in by_partition["event_time"].max().items()}
    late = int(df["late"].sum())
    df = df[~df["late"]]
    cfg = settings.features
    fold = InMemoryFeatures(cfg)
    user_time: dict[str, int] = {}
    item_time: dict[str, int] = {}
    values = df["value"].astype(object).where(df["value"].notna(), None)
    rows = zip(df["event_id"], df["user_id"], df["item_id"], df["event_type"], values, df["event_time"].astype(int))
    for event_id, user_id, item_id, event_type, value, event_time in tqdm(rows, total=len(df), desc="backfill", disable=None if progress else True, unit="ev"):
        user, touched = fold.add(event_id, user_id, item_id, event_type, value, event_time)
        user_time[user_id] = max(user_time.get(user_id, 0), event_time)
        for touched_id in touched:
            item_time[touched_id] = max(item_time.get(touched_id, 0), event_time)
        if history is not None:
            history.record(event_time, user_id, user, touched, fold.items)
    return Backfill(table.version(), len(df), late, fold.users, fold.items, user_time, item_time,
                    next_offsets, max_event_time)


def write_offline(settings: Settings, frames: dict[str, pd.DataFrame]) -> None:
    """Replace each view's offline Parquet file (Feast's batch source) with these rows, atomically
    (write aside, then rename), so a reader never sees half a file."""
    for view, frame in frames.items():
        if len(frame):
            path = snapshot_table(settings, view)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
            os.replace(tmp, path)


def write_online(settings: Settings, result: Backfill) -> int:
    """Seed the online store with the backfilled values (e.g. after losing Redis)."""
    from features.online_writer import OnlineWriter

    writer = OnlineWriter(settings)
    cfg = settings.features
    for user_id, state in result.users.items():
        ts = result.user_time[user_id]
        writer.stage(names.USER_STATS, user_id, state.stats.features, ts)
        writer.stage(names.USER_RECENT, user_id, state.recent_features, ts)
    for item_id, state in result.items.items():
        ts = result.item_time[item_id]
        if state.latest_ms >= 0:
            writer.stage(names.ITEM_STATS, item_id, state.stats.features, ts)
            writer.stage(names.ITEM_POPULARITY, item_id, partial(state.popularity_features, cfg), ts)
        if state.covisit:
            writer.stage(names.ITEM_COVISIT, item_id, partial(state.covisit_features, cfg), ts)
    return writer.flush()
