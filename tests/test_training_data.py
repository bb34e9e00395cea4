"""Training examples from a real Delta events table (loaded through the stream job's sink)."""

from __future__ import annotations

import pandas as pd
import pytest

from batch.nightly.training_data import build
from infra.settings import Settings
from streaming.lake import LakeWriter
from streaming.replay import load_events
from tests.conftest import ML100K

N = 20_000


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory) -> Settings:
    s = Settings(data_dir=tmp_path_factory.mktemp("training"), ml100k_path=ML100K)
    events = load_events(ML100K).events[:N]
    rows = [(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time, None, 0, i, False, 0)
            for i, e in enumerate(events)]
    LakeWriter.for_settings(s).append(0, rows)
    return s


def test_labels_and_sampled_negatives(lake_settings):
    data = build(lake_settings)
    real = data.examples[~data.examples["sampled"]]
    assert len(real) == N  # every rating is labelled
    src = pd.DataFrame([e.model_dump() for e in load_events(ML100K).events[:N]]).set_index("event_id")
    assert (real.set_index("event_id")["label"] == (src.loc[real["event_id"], "value"] >= 4).astype(float)).all()
    negatives = data.examples[data.examples["sampled"]]
    n_pos = int((real["label"] == 1).sum())
    assert 0.9 * 4 * n_pos <= len(negatives) <= 4 * n_pos
    assert (negatives["label"] == 0).all()
    seen = real.groupby("user_id")["item_id"].agg(set)
    assert not any(item in seen[user] for user, item in zip(negatives["user_id"], negatives["item_id"]))


def test_split_is_by_time_never_random(lake_settings):
    data = build(lake_settings)
    assert data.train["event_time"].max() <= data.validation["event_time"].min()
    assert len(data.validation) > 0
    per_user = lake_settings.model_copy(update={"training": lake_settings.training.model_copy(update={"validation": "last_per_user"})})
    by_user = build(per_user).examples
    real = by_user[~by_user["sampled"]]
    last = real.groupby("user_id").tail(1)
    assert (last["split"] == "validation").all()
    assert (real.groupby("user_id")["split"].apply(lambda s: (s == "validation").sum()) == 1).all()


def test_same_version_and_seed_give_the_same_examples(lake_settings):
    # the examples, not the ranker's lists (tests/test_retrain.py reproduces whole versions): five builds stay quick
    lake_settings = lake_settings.model_copy(update={"ranker": lake_settings.ranker.model_copy(update={"enabled": False})})
    first = build(lake_settings)
    pd.testing.assert_frame_equal(first.examples, build(lake_settings).examples)
    other_seed = lake_settings.model_copy(update={"training": lake_settings.training.model_copy(update={"seed": 1})})
    assert not build(other_seed).examples.equals(first.examples)
    # more events arrive; the pinned version still gives the old examples
    more = load_events(ML100K).events[N:N + 1000]
    LakeWriter.for_settings(lake_settings).append(
        0, [(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time, None, 0, N + i, False, 0)
            for i, e in enumerate(more)])
    pinned = build(lake_settings, version=first.table_version)
    assert pinned.table_version == first.table_version
    pd.testing.assert_frame_equal(pinned.examples, first.examples)
    assert len(build(lake_settings).examples) > len(first.examples)


def test_point_in_time_join_never_sees_a_later_value(lake_settings, tmp_path):
    """Feature history from the backfill, joined by Feast at (event time - 1 ms): no value from
    the event itself or after it can appear in its row."""
    from batch.backfill import compute
    from batch.feature_history import FeatureHistory
    from features.store import apply, feature_store

    s = lake_settings.model_copy(update={"features": lake_settings.features.model_copy(update={"project": "pit"})})
    apply(s)
    history = FeatureHistory(s, every_ms=0, chunk_rows=5_000)  # written in many row groups
    compute(s, progress=False, history=history)
    history.publish()
    events = load_events(ML100K).events[:2000]
    requests = pd.DataFrame({"user_id": [e.user_id for e in events],
                             "event_timestamp": pd.to_datetime([e.event_time - 1 for e in events], unit="ms", utc=True)})
    joined = feature_store(s).get_historical_features(entity_df=requests, features=["user_stats:n_events", "user_stats:last_seen_ms"]).to_df()
    history = pd.DataFrame([e.model_dump() for e in load_events(ML100K).events])
    first_seen = history.groupby("user_id")["event_time"].min()
    # the DuckDB offline store left-joins: every request row comes back, empty where there is no earlier value
    assert len(joined) == len(requests)
    no_history = joined["n_events"].isna()
    assert (no_history == [first_seen[u] >= int(round(t.timestamp() * 1000)) + 1
                           for u, t in zip(joined["user_id"], joined["event_timestamp"])]).all()
    for row in joined[~no_history].sample(300, random_state=0).itertuples():
        t = int(round(row.event_timestamp.timestamp() * 1000))
        assert row.last_seen_ms <= t  # nothing from the future
        before = history[(history["user_id"] == row.user_id) & (history["event_time"] <= t)]
        assert row.n_events == len(before)  # everything from the past (a snapshot after every event)


def test_event_type_weights_reach_the_examples_and_the_lists(lake_settings):
    """events.types.<type>.weight: the type's rows and the lists it heads carry it into the loss;
    sampled negatives weigh 1."""
    from batch.nightly.retrain import _weights

    weighted = lake_settings.model_copy(update={"events": lake_settings.events.model_validate({"types": {"rating": {"weight": 2.5}}})})
    data = build(weighted)
    real, sampled = data.examples[~data.examples["sampled"]], data.examples[data.examples["sampled"]]
    assert (real["weight"] == 2.5).all() and (sampled["weight"] == 1.0).all()
    assert (data.ranker_lists.frame["weight"] == 2.5).all()
    assert _weights(data.examples) is not None and _weights(data.examples.assign(weight=1.0)) is None


def test_impression_negatives_are_shown_not_engaged_and_point_in_time(tmp_path):
    """Hand-made: user u is shown a, b, c at t=1000; engages b at 1500; rates d highly at 5000
    (window closed) and e at 1800 (window still open). Negatives from the impressions go only to
    the 5000 positive, are c and a (never the engaged b, never an item u rated), last shown first."""
    from streaming.lake import ImpressionRow

    s = Settings(data_dir=tmp_path, ml100k_path=ML100K,
                 training={"impression_negatives": 2, "negatives_per_positive": 0, "validation_days": 0.00001},
                 attribution={"window_s": 1.0, "event_types": ["click", "rating"]})
    t0 = 1_700_000_000_000
    events = [("e1", "u", "b", "click", None, t0 + 1500), ("e2", "u", "e", "rating", 5.0, t0 + 1800),
              ("e3", "u", "d", "rating", 5.0, t0 + 5000), ("e4", "w", "a", "rating", 5.0, t0 + 6000)]
    LakeWriter.for_settings(s).append(0, [(i, u, it, typ, v, t, None, 0, n, False, 0)
                                          for n, (i, u, it, typ, v, t) in enumerate(events)])
    record = {"request_id": "r1", "user_id": "u", "model_version": "v1", "served_at_ms": 0,
              "items": [{"item_id": x, "position": p, "score": 1.0, "sources": ["similar"]} for p, x in enumerate("abc")]}
    LakeWriter.for_impressions(s).append(0, ImpressionRow.of_record(record, t0 + 1000, "-", 0, 0))
    examples = build(s).examples
    negatives = examples[examples["sampled"]]
    assert sorted(negatives[["event_id", "item_id"]].values.tolist()) == [["e3:imp0", "c"], ["e3:imp1", "a"]]
    assert (negatives["label"] == 0).all() and (negatives["event_time"] == t0 + 5000).all()
    without = build(s.model_copy(update={"training": s.training.model_copy(update={"impression_negatives": 0})})).examples
    assert not without["sampled"].any()


def test_a_replay_takes_impression_negatives_from_the_lists_it_served():
    """The stream form (batch.shown_lists, what `recsys evaluate` feeds): a positive's rows get the
    shown and not engaged items of lists whose window closed, besides the sampled ones."""
    from batch.event_examples import EventExamples
    from batch.shown_lists import ShownLists
    from features.live import LiveFeatures
    from features.model_inputs import FeatureSpec
    from infra.settings import FeatureSettings
    from streaming.events import Event
    from streaming.vocabulary import EventVocabulary

    settings = Settings(training={"impression_negatives": 2, "negatives_per_positive": 0})
    spec = FeatureSpec(("user_stats:n_events",), ("item_stats:n_events",), "user_recent:recent_items", "d")
    live = LiveFeatures(FeatureSettings(), spec)
    shown = ShownLists(window_ms=1_000, engaging={"click"})
    examples = EventExamples(settings.training, EventVocabulary.from_settings(settings), live, {"x": 1}, shown=shown)
    shown.shown("u", 0, ["a", "b", "c"])
    click = Event(event_id="e1", user_id="u", item_id="b", event_type="click", event_time=500)
    shown.event("u", "b", 500, "click")
    early = examples.make(click, (0,))
    assert [r[1] for r in early] == ["b"]  # the list's window is still open at 500: nothing to take yet
    later = Event(event_id="e2", user_id="u", item_id="x", event_type="click", event_time=2_000)
    rows = examples.make(later, (1,))
    assert [(r[1], r[2]) for r in rows] == [("x", 1.0), ("c", 0.0), ("a", 0.0)]  # never the engaged b
