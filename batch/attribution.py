"""Attribution, the batch definition: which shown items were then engaged with, per version and arm.

An item shown in a served list (an impression, ``serving.impressions``) is *engaged* when the same
user has an event of an engaging type on the same item within ``window_ms`` after the list was
served: ``shown_at < event_time <= shown_at + window_ms``. ``shown_at`` is the list's
``event_clock_ms`` (the stream's event time when the API served it, so a replayed log is
attributed in its own time) or, without one, its wall-clock ``served_at_ms``. A list logged twice
(same ``request_id``) and an event seen twice (same ``event_id``) count once. This is what the
streaming attribution must reproduce (issue 22); the lake's tables are its input.

>>> imps = [{"request_id": "r1", "user_id": "u", "model_version": "v1", "arm": None, "served_at_ms": 0,
...          "event_clock_ms": 1000, "items": [{"item_id": "a", "position": 0, "score": 0.9, "sources": ["similar"]},
...                                            {"item_id": "b", "position": 1, "score": 0.8, "sources": ["popular"]}]}]
>>> events = [{"event_id": "e1", "user_id": "u", "item_id": "b", "event_type": "click", "event_time": 1500},
...           {"event_id": "e1", "user_id": "u", "item_id": "b", "event_type": "click", "event_time": 1500}]
>>> table = by_version(impressions_frame(imps), events_frame(events), window_ms=60_000, engaging=("click",))
>>> table[["model_version", "lists", "shown", "engaged", "ctr", "hit_rate", "users"]].to_dict("records")
[{'model_version': 'v1', 'lists': 1, 'shown': 2, 'engaged': 1, 'ctr': 0.5, 'hit_rate': 1.0, 'users': 1}]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from streaming.lake import read_events

from streaming.live_attribution import NO_ARM, shown_at  # NO_ARM: lists served outside any experiment


def impressions_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per shown item: request_id, user_id, model_version, arm, shown_at, item_id, position, sources."""
    rows, seen = [], set()
    for r in records:
        if r["request_id"] in seen:
            continue
        seen.add(r["request_id"])
        for i in r["items"]:
            rows.append((r["request_id"], r["user_id"], r["model_version"], r.get("arm") or NO_ARM, shown_at(r),
                         i["item_id"], int(i["position"]), tuple(i["sources"])))
    return pd.DataFrame(rows, columns=["request_id", "user_id", "model_version", "arm", "shown_at", "item_id",
                                       "position", "sources"])


def events_frame(records: Iterable[dict]) -> pd.DataFrame:
    """event_id, user_id, item_id, event_type, event_time; one row per event id."""
    frame = pd.DataFrame(list(records), columns=["event_id", "user_id", "item_id", "event_type", "event_time"])
    return frame.drop_duplicates("event_id")


def lake_impressions(path: Path, version: int | None = None) -> pd.DataFrame:
    """:func:`impressions_frame`'s rows from the lake's ``impressions`` table (the attribution job
    lands one row per shown item; a list logged twice counts once, by request id)."""
    t = read_events(path, version, ["request_id", "user_id", "model_version", "arm", "shown_at", "item_id",
                                    "position", "sources", "kafka_partition", "kafka_offset"]).to_pandas()
    first = t.groupby("request_id")["kafka_offset"].transform("min") == t["kafka_offset"]  # the first copy's rows
    t = t[first].drop_duplicates(["request_id", "item_id"]).reset_index(drop=True)
    t["sources"] = t["sources"].map(tuple)
    return t[["request_id", "user_id", "model_version", "arm", "shown_at", "item_id", "position", "sources"]]


def lake_events(path: Path, version: int | None = None) -> pd.DataFrame:
    """:func:`events_frame` from the lake's ``events`` table (late events are left out, as live
    attribution leaves them)."""
    t = read_events(path, version, ["event_id", "user_id", "item_id", "event_type", "event_time", "late"]).to_pandas()
    return events_frame(t[~t["late"]].drop(columns="late").to_dict("records"))


def engaged(shown: pd.DataFrame, events: pd.DataFrame, window_ms: int, engaging: Sequence[str]) -> pd.Series:
    """For each shown item (row of :func:`impressions_frame`), whether it was engaged with in the window."""
    if shown.empty:
        return pd.Series([], dtype=bool)
    hits = events[events["event_type"].isin(list(engaging))][["user_id", "item_id", "event_time"]]
    keyed = shown[["user_id", "item_id", "shown_at"]].reset_index()
    joined = keyed.merge(hits, on=["user_id", "item_id"], how="inner")
    inside = joined[(joined["event_time"] > joined["shown_at"]) & (joined["event_time"] <= joined["shown_at"] + window_ms)]
    return pd.Series(shown.index.isin(inside["index"].unique()), index=shown.index)


def by_version(shown: pd.DataFrame, events: pd.DataFrame, window_ms: int, engaging: Sequence[str]) -> pd.DataFrame:
    """Per (model_version, arm): lists, shown items, engaged items, CTR (engaged / shown), hit rate
    (lists with an engaged item / lists), users reached."""
    s = shown.assign(engaged=engaged(shown, events, window_ms, engaging))
    lists = s.groupby(["model_version", "arm", "request_id"], as_index=False).agg(hit=("engaged", "any"))
    per_list = lists.groupby(["model_version", "arm"]).agg(lists=("request_id", "size"), hits=("hit", "sum"))
    items = s.groupby(["model_version", "arm"]).agg(shown=("item_id", "size"), engaged=("engaged", "sum"),
                                                    users=("user_id", "nunique"))
    out = per_list.join(items).reset_index()
    out["ctr"] = out["engaged"] / out["shown"]
    out["hit_rate"] = out["hits"] / out["lists"]
    return out[["model_version", "arm", "lists", "shown", "engaged", "ctr", "hits", "hit_rate", "users"]]


def by_source_and_position(shown: pd.DataFrame, events: pd.DataFrame, window_ms: int,
                           engaging: Sequence[str]) -> pd.DataFrame:
    """Per (model_version, arm, source, position): shown, engaged, CTR. An item proposed by several
    sources counts under each."""
    s = shown.assign(engaged=engaged(shown, events, window_ms, engaging)).explode("sources")
    out = s.groupby(["model_version", "arm", "sources", "position"]).agg(
        shown=("item_id", "size"), engaged=("engaged", "sum")).reset_index().rename(columns={"sources": "source"})
    out["ctr"] = out["engaged"] / out["shown"]
    return out


__all__ = ["NO_ARM", "by_source_and_position", "by_version", "engaged", "events_frame", "impressions_frame", "lake_events",
           "lake_impressions"]
