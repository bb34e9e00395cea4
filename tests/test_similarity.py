"""Item similarity, its frozen tables, cross features and the listwise training lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batch.nightly.training_lists import CROSS_COLUMNS, fold, list_items, list_size
from infra.settings import Settings, TrainingSettings
from models.cross_features import AGE_NAME, NAMES, cross_features, item_age
from models.similarity import UNSEEN, CoOccurrence, DailySimilarity, SimilarityTable, top_similar

DAY = 86_400_000
STREAM = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "z"), ("d", "y"), ("d", "z")]


def learned(pair_with=None) -> CoOccurrence:
    co = CoOccurrence(pair_with=pair_with)
    for user, item in STREAM:
        co.learn(user, item)
    return co


def test_frozen_table_keeps_the_most_similar_neighbours_and_survives_a_round_trip(tmp_path):
    co = learned()
    table = co.freeze(top_k=1)
    # x: y (C=2, n=3) beats z (C=1, n=2): 2/sqrt(3*3) > 1/sqrt(3*2)
    assert [table.ids[j] for j in table.row(table.index["x"])[0]] == ["y"]
    loaded = SimilarityTable.load(table.save(tmp_path), "v0001")
    assert loaded.source == "v0001" and loaded.ids.tolist() == ["x", "y", "z"]
    for i in range(len(table)):
        assert np.array_equal(loaded.row(i)[0], table.row(i)[0]) and np.allclose(loaded.row(i)[1], table.row(i)[1])
    # the full table and the live counts give the same cross features
    assert np.allclose(cross_features(co.freeze(top_k=10), ["z", "x"], ["y", "q"]), cross_features(co, ["z", "x"], ["y", "q"]))


def test_an_item_s_first_time_survives_freezing_and_saving_and_old_tables_have_none(tmp_path):
    daily = DailySimilarity(CoOccurrence(), top_k=10, every_ms=DAY)
    for t, (user, item) in enumerate(STREAM):
        daily.learn(user, item, t * DAY)
    table = SimilarityTable.load(daily.freeze().save(tmp_path))
    assert dict(zip(table.ids, table.first_seen_ms.tolist())) == {"x": 0, "y": DAY, "z": 5 * DAY}
    assert np.expm1(item_age(table, ["x", "z", "new"], 7 * DAY)).round(6).ravel().tolist() == [7.0, 2.0, 0.0]
    old = tmp_path / "old.npz"  # as versions saved before item times were kept
    with np.load(tmp_path / "similarity.npz") as f:
        np.savez(old, **{k: f[k] for k in f.files if k != "first_seen_ms"})
    legacy = SimilarityTable.load(old)
    assert (legacy.first_seen_ms == UNSEEN).all() and (item_age(legacy, ["x"], 7 * DAY) == 0).all()


def test_a_corrupt_table_file_says_which_file(tmp_path):
    bad = tmp_path / "similarity.npz"
    bad.write_bytes(b"not a table")
    with pytest.raises(ValueError, match="similarity.npz is not a readable similarity table"):
        SimilarityTable.load(bad)


def test_top_similar_skips_what_the_user_has():
    co = learned()
    assert top_similar(co, ["x"], 5, 0.8, 20) == ["y", "z"]
    assert top_similar(co, ["x"], 5, 0.8, 20, exclude={"y"}) == ["z"]
    assert top_similar(co, ["unknown"], 5, 0.8, 20) == []


def test_daily_similarity_never_shows_the_future():
    daily = DailySimilarity(CoOccurrence(pair_with=None), top_k=10, every_ms=DAY)
    daily.learn("a", "x", 0)
    daily.learn("a", "y", 1000)  # same day: not in the table yet
    assert len(daily.table(DAY - 1)) == 0
    assert daily.table(DAY).index.keys() == {"x", "y"}  # frozen at the boundary
    daily.learn("b", "z", DAY + 5)
    daily.learn("b", "x", DAY + 6)
    assert "z" not in daily.table(2 * DAY - 1).index


def test_cross_features_of_a_user_without_history_are_neutral():
    f = cross_features(learned(), [], ["x", "y"])
    assert np.all(f[:, :5] == 0) and np.all(f[:, NAMES.index("log_knn_rank")] == pytest.approx(np.log(2)))


def test_a_list_is_the_target_then_sampled_pool_then_random_negatives():
    from batch.nightly.training_lists import RANK_SMOOTHING

    cfg = TrainingSettings(hard_negatives=3, negatives_per_positive=2, hard_pool=10)
    co = learned()  # x's neighbours: y, z
    items = ["x", "y", "z", "w", "v", "u", "s"]
    chosen, offsets = list_items(cfg, "w", ["x"], {"x", "s"}, co, items, set(items), ["u", "y"], np.random.default_rng(0))
    assert len(chosen) == len(offsets) == list_size(cfg) == 6
    assert chosen[0] == "w" and offsets[0] == 0.0
    pool = ["y", "z", "u"]  # the kNN list, then the popular items it lacks
    q = 1 / (np.arange(3) + RANK_SMOOTHING)
    q /= q.sum()
    for item, offset in zip(chosen[1:4], offsets[1:4]):
        assert item in pool and offset == pytest.approx(-np.log(3 * q[pool.index(item)]))
    assert set(chosen[4:]) <= {"v", "y", "z", "u"} and offsets[4:] == [0.0, 0.0]  # uniform draws, no correction
    assert not {"x", "s"} & set(chosen)  # never what the user has seen
    assert list_items(cfg, "x", [], set(), None, ["x"], {"x"}, [], np.random.default_rng(0)) == ([], [])


def test_fold_makes_lists_without_look_ahead(tmp_path):
    """Each list's hard negatives and cross features come from the table frozen at the last day
    boundary before its event; lists stop at the validation cutoff."""
    settings = Settings(data_dir=tmp_path, training={"hard_negatives": 2, "negatives_per_positive": 1})
    rng = np.random.default_rng(1)
    rows = [(f"u{rng.integers(0, 30)}", f"i{rng.integers(0, 15)}", int(t)) for t in np.sort(rng.integers(0, 5 * DAY, 400))]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"]).assign(label=1.0)
    heads = rng.random(len(events)) < 0.5
    cutoff = 4 * DAY
    lists = fold(settings, events, heads, cutoff)
    frame = lists.frame
    g = list_size(settings.training)
    assert len(frame) == g * frame["list"].nunique() and (frame["event_time"] < cutoff).all()
    assert (frame.groupby("list")["label"].apply(list) == pd.Series([[1.0] + [0.0] * (g - 1)] * frame["list"].nunique(),
                                                                     index=frame["list"].unique())).all()
    # replay the first list after day 1 by hand: the table as of its day boundary, the user's recent items
    first = frame[frame["event_time"] >= DAY].iloc[0]
    t, user = int(first["event_time"]), first["user_id"]
    before = events[events["event_time"] < t]
    daily = DailySimilarity(CoOccurrence(settings.model.similarity_pair_with), settings.model.similarity_top_k, DAY)
    for r in before.itertuples():
        daily.learn(r.user_id, r.item_id, r.event_time)
    table = daily.table(t)
    recent = before[before["user_id"] == user]["item_id"].tolist()[::-1][:settings.features.recent_items]
    mine = frame[frame["list"] == first["list"]]
    expected = cross_features(table, recent, mine["item_id"].tolist())
    assert np.allclose(mine[CROSS_COLUMNS].to_numpy(), expected, atol=1e-6)
    # each candidate's age at the list's time, from the first times the same table knows
    first_seen = before.groupby("item_id")["event_time"].min()
    known = [table.index.get(i) is not None for i in mine["item_id"]]
    want = [np.log1p((t - first_seen[i]) / DAY) if k else 0.0 for i, k in zip(mine["item_id"], known)]
    assert np.allclose(mine[AGE_NAME].to_numpy(), want, atol=1e-5)
    assert lists.at_cutoff.index.keys() == set(events.loc[events["event_time"] < cutoff, "item_id"])


def test_a_windowed_fold_makes_only_the_window_s_lists_from_all_of_the_history(tmp_path):
    """``since_ms`` (the ranker's train_days) limits the lists, not what they read: the first list
    in the window sees the similarity of every event before the window, and the final table is
    the same as without a window."""
    settings = Settings(data_dir=tmp_path, training={"hard_negatives": 2, "negatives_per_positive": 1})
    rng = np.random.default_rng(2)
    rows = [(f"u{rng.integers(0, 30)}", f"i{rng.integers(0, 15)}", int(t)) for t in np.sort(rng.integers(0, 5 * DAY, 400))]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"]).assign(label=1.0)
    heads = rng.random(len(events)) < 0.5
    since, cutoff = 2 * DAY + 1234, 4 * DAY
    everything, window = fold(settings, events, heads, cutoff), fold(settings, events, heads, cutoff, since_ms=since)
    assert (window.frame["event_time"] >= since).all() and (window.frame["event_time"] < cutoff).all()
    assert 0 < window.frame["list"].nunique() < everything.frame["list"].nunique()
    assert np.array_equal(window.final.neighbours, everything.final.neighbours)
    assert np.array_equal(window.final.counts, everything.final.counts)
    first = window.frame.iloc[0]
    started = int(events.loc[events["event_time"] >= since, "event_time"].iloc[0])  # the window's first event freezes
    co = CoOccurrence(settings.model.similarity_pair_with)
    for r in events[events["event_time"] < started].itertuples():
        co.learn(r.user_id, r.item_id)
    before = events[events["event_time"] < int(first["event_time"])]
    recent = before[before["user_id"] == first["user_id"]]["item_id"].tolist()[::-1][:settings.features.recent_items]
    mine = window.frame[window.frame["list"] == first["list"]]
    expected = cross_features(co.freeze(settings.model.similarity_top_k), recent, mine["item_id"].tolist())
    assert np.allclose(mine[CROSS_COLUMNS].to_numpy(), expected, atol=1e-6)


def test_a_full_list_is_what_the_api_would_rank_padded_out_of_the_softmax():
    from models.list_ranker import PADDING

    cfg = TrainingSettings(hard_sampling="full", hard_negatives=5, negatives_per_positive=1, hard_pool=10)
    co = learned()  # x's neighbours: y, z
    items = ["x", "y", "z", "w", "v", "u"]
    chosen, offsets = list_items(cfg, "z", ["x"], {"x"}, co, items, set(items), ["u", "y"], np.random.default_rng(0))
    assert len(chosen) == len(offsets) == list_size(cfg) == 7
    assert chosen[:3] == ["z", "y", "u"] and offsets[:3] == [0.0] * 3  # the item taken, then the rest of the pool
    assert chosen[3:6] == ["z"] * 3 and offsets[3:6] == [PADDING] * 3  # the pool was short: padding rows
    assert chosen[6] not in {"x", "z"} and offsets[6] == 0.0  # then the uniform draw
    # an item the candidate sources would not have proposed makes no list: the ranker never ranks it
    assert list_items(cfg, "w", ["x"], {"x"}, co, items, set(items), ["u", "y"], np.random.default_rng(0)) == ([], [])
