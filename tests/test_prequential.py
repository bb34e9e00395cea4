"""`recsys evaluate`: prequential replay of an event file in another format than u.data."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from batch.evaluate.prequential import STRATEGIES
from batch.evaluate.prequential_report import day_of
from streaming.events import DAY_MS
from infra import cli
from streaming.replay import load_events

HISTORY_EVENTS = 6000


@pytest.fixture(scope="module")
def report(ml100k_path, tmp_path_factory):
    """ml-100k's first events as a CSV with its own column names, evaluated through the CLI."""
    tmp = tmp_path_factory.mktemp("prequential")
    raw = pd.read_csv(ml100k_path, sep="\t", names=["userId", "movieId", "rating", "timestamp"])
    raw = raw.sort_values("timestamp", kind="stable").head(HISTORY_EVENTS)
    csv = tmp / "ratings.csv"
    raw.to_csv(csv, index=False)
    env = {"RECSYS_DATA_DIR": str(tmp / "data"), "RECSYS_MODEL__USER_BUCKETS": "4000",
           "RECSYS_MODEL__ITEM_BUCKETS": "4000", "RECSYS_MODEL__EMBEDDING_DIM": "16", "RECSYS_TRAINING__EPOCHS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        code = cli.main(["evaluate", str(csv), "--columns", "user_id=userId,item_id=movieId,value=rating,event_time=timestamp",
                         "--eval-days", "2", "--out", str(tmp / "out"), "--quiet"])
    assert code == 0
    events = load_events(csv, columns={"user_id": "userId", "item_id": "movieId", "value": "rating",
                                       "event_time": "timestamp"}).events
    return json.loads((tmp / "out" / "prequential.json").read_text()), tmp / "out", events


def test_every_strategy_is_scored_on_the_same_events(report):
    data, out, _ = report
    assert (out / "prequential.png").stat().st_size > 10_000
    assert data["strategies"] == [*STRATEGIES, "item_knn", "ease", "sasrec"]  # the engine, then the yardsticks
    counts = {data["overall"][s]["events"] for s in data["strategies"]}
    assert len(counts) == 1 and counts.pop() > 50
    for s in data["strategies"]:
        m = data["overall"][s]
        assert 0 <= m["ndcg"] <= m["hr"] <= 1
        assert m["ndcg_low"] <= m["ndcg"] <= m["ndcg_high"] and m["hr_low"] <= m["hr"] <= m["hr_high"]
    assert data["fit_seconds"]["sasrec"] > 0 and data["fit_seconds"]["daily"] > 0
    assert data["overall"]["item_knn"]["hr"] > data["overall"]["popularity"]["hr"]  # the yardstick is a real one
    assert data["retrains"] >= 2  # the history model, then at least one daily retrain
    assert sum(day["online"]["events"] for day in data["per_day"].values()) == data["overall"]["online"]["events"]


def test_the_default_recipe_beats_popularity_and_item_knn(report):
    """The quality regression guard: what the API would serve (candidates + ranker with default
    settings) beats both yardsticks on HR@10, and popularity by a paired interval above zero."""
    data, _, _ = report
    hr = {s: data["overall"][s]["hr"] for s in ("served", "item_knn", "popularity")}
    assert hr["served"] > hr["item_knn"] and hr["served"] > hr["popularity"], hr
    assert data["ndcg_differences"]["served_vs_popularity"]["low"] > 0


def test_popularity_numbers_match_an_independent_count(report):
    """The popularity strategy, recomputed here from the same events: rank by labelled events so far."""
    data, _, events = report
    events = sorted(events, key=lambda e: (e.event_time, e.event_id))
    start = events[-1].event_time - 2 * DAY_MS
    counts: Counter = Counter()
    seen: dict[str, set] = {}
    order: list[str] = []
    hits = n = 0
    for e in events:
        positive = e.value >= 4.0
        if e.event_time >= start and positive and e.item_id in counts and e.item_id not in seen.get(e.user_id, set()):
            unseen = [i for i in order if i not in seen.get(e.user_id, set())]
            rank = sum(counts[i] >= counts[e.item_id] for i in unseen) - 1
            n += 1
            hits += rank < 10
        if e.item_id not in counts:
            order.append(e.item_id)
        counts[e.item_id] += 1
        seen.setdefault(e.user_id, set()).add(e.item_id)
    assert data["overall"]["popularity"]["events"] == n
    assert data["overall"]["popularity"]["hr"] == pytest.approx(hits / n)


def test_paired_differences_agree_with_the_overall_numbers(report):
    data, _, _ = report
    for pair, d in data["ndcg_differences"].items():
        a, b = pair.split("_vs_")
        assert d["mean"] == pytest.approx(data["overall"][a]["ndcg"] - data["overall"][b]["ndcg"])
        assert d["low"] <= d["mean"] <= d["high"]
        assert 0 <= d["a_ahead"] + d["b_ahead"] <= 1


def test_catalogue_churn_relaunches_items_under_new_ids(ml100k_path, tmp_path, monkeypatch):
    """--renew-items: the evaluated period's renewed items are new ids to every model trained
    before it; the report says how the replay was altered. (Run with model.ids=managed: the
    replay admits and looks ids up as the nightly job and the learner do.)"""
    from batch.evaluate.catalogue_churn import renew_items

    for k, v in {"RECSYS_DATA_DIR": str(tmp_path / "data"), "RECSYS_MODEL__USER_BUCKETS": "4000",
                 "RECSYS_MODEL__ITEM_BUCKETS": "4000", "RECSYS_MODEL__EMBEDDING_DIM": "16",
                 "RECSYS_TRAINING__EPOCHS": "1", "RECSYS_MODEL__IDS": "managed"}.items():
        monkeypatch.setenv(k, v)
    raw = pd.read_csv(ml100k_path, sep="\t", names=["user", "item", "rating", "ts"]).sort_values("ts", kind="stable")
    path = tmp_path / "u.data"
    raw.head(HISTORY_EVENTS).to_csv(path, sep="\t", header=False, index=False)
    assert cli.main(["evaluate", str(path), "--eval-days", "1", "--renew-items", "0.5", "--out", str(tmp_path / "out"),
                     "--quiet", "--baselines", "item_knn"]) == 0
    data = json.loads((tmp_path / "out" / "prequential.json").read_text())
    assert data["scenario"] == {"renew_items": 0.5, "renew_every_days": 1.0}
    assert data["strategies"] == [*STRATEGIES, "item_knn"]
    events = load_events(path).events
    start = max(e.event_time for e in events) - DAY_MS
    renewed = renew_items(events, start, DAY_MS, 0.5)
    after = [e for e in renewed if e.event_time >= start]
    new_ids = {e.item_id for e in after if "~" in e.item_id}
    assert new_ids and not new_ids & {e.item_id for e in renewed if e.event_time < start}
    assert 0.3 < len(new_ids) / len({e.item_id for e in after}) < 0.7
    assert data["overall"]["online"]["events"] > 0


def test_managed_ids_in_the_replay_follow_the_admission_rule(ml100k_path, tmp_path):
    """With model.ids=managed every strategy trains and scores through its own id tables: an id
    has a row of its own only after model.id_min_count events, and the online model admits the
    evaluated period's ids as they arrive."""
    from collections import Counter

    from batch.evaluate.prequential import Prequential
    from features.model_inputs import feature_spec
    from features.store import apply
    from infra.settings import Settings

    s = Settings(data_dir=tmp_path, features={"project": "preqids"},
                 model={"ids": "managed", "id_min_count": 3, "user_buckets": 3000, "item_buckets": 3000,
                        "embedding_dim": 16}, training={"epochs": 1}, evaluation={"baselines": []})
    apply(s)
    from batch.evaluate.catalogue_churn import renew_items

    events = sorted(load_events(ml100k_path).events, key=lambda e: (e.event_time, e.event_id))[:HISTORY_EVENTS]
    start = events[-1].event_time - DAY_MS
    events = renew_items(events, start, DAY_MS, 0.5)  # new item ids arrive during the evaluated day
    replay = Prequential(s, feature_spec(s), progress=False)
    report = replay.run(events, start)
    assert report.overall["online"]["events"] > 0
    ids = replay._online.ids
    counts = Counter(e.item_id for e in events)
    assert ids.managed and len(ids.items) > 0
    assert all(counts[i] >= 3 for i in ids.items.row_of)  # the frequency filter
    before = {e.item_id for e in events if e.event_time < start}
    arrived = Counter(e.item_id for e in events if e.event_time >= start and e.item_id not in before)
    assert any(n >= 3 for n in arrived.values())
    assert {i for i, n in arrived.items() if n >= 3} <= set(ids.items.row_of)  # admitted online, no nightly run
    assert not {i for i, n in arrived.items() if n < 3} & set(ids.items.row_of)


def test_a_validation_window_ends_before_the_evaluated_days(ml100k_path, tmp_path, monkeypatch):
    """--skip-last-days: the days tuned on come before the days reported, and never overlap them."""
    for k, v in {"RECSYS_DATA_DIR": str(tmp_path / "data"), "RECSYS_MODEL__USER_BUCKETS": "4000",
                 "RECSYS_MODEL__ITEM_BUCKETS": "4000", "RECSYS_MODEL__EMBEDDING_DIM": "16",
                 "RECSYS_TRAINING__EPOCHS": "1"}.items():
        monkeypatch.setenv(k, v)
    raw = pd.read_csv(ml100k_path, sep="\t", names=["user", "item", "rating", "ts"]).sort_values("ts", kind="stable")
    raw = raw.head(HISTORY_EVENTS)
    path = tmp_path / "u.data"
    raw.to_csv(path, sep="\t", header=False, index=False)
    assert cli.main(["evaluate", str(path), "--eval-days", "1", "--skip-last-days", "1", "--baselines", "none",
                     "--out", str(tmp_path / "out"), "--quiet"]) == 0
    data = json.loads((tmp_path / "out" / "prequential.json").read_text())
    last = int(raw["ts"].max()) * 1000
    assert data["scenario"] == {"skip_last_days": 1.0} and data["strategies"] == list(STRATEGIES)
    kept = raw["ts"].to_numpy() * 1000
    newest_kept = int(kept[kept < last - DAY_MS].max())  # the newest event outside the skipped day
    assert data["eval_start_ms"] == newest_kept - DAY_MS
    assert max(data["per_day"]) <= day_of(last - DAY_MS)  # no scored event from the skipped day
