"""The feature definitions on small hand-checked inputs (no services needed)."""

from __future__ import annotations

import pickle
import random

from features.compute import ItemState, UserState, item_step, item_updates
from infra.settings import FeatureSettings, WindowSpec

HOUR = 3_600_000


def test_popularity_counts_the_window_that_ends_after_the_latest_event():
    cfg = FeatureSettings(windows=[WindowSpec(name="1h", size_s=3600, slide_s=600), WindowSpec(name="24h", size_s=86400, slide_s=3600)])
    item = ItemState(2)
    for t in [0, 30 * 60_000, 2 * HOUR + 5 * 60_000]:
        item.add_event(cfg, "view", None, t)
    f = item.popularity_features(cfg)
    # latest 2h05m -> 1h window [1h10m, 2h10m) holds only the last; 24h window holds all three
    assert (f["pop_1h"], f["pop_1h_view"], f["pop_24h"]) == (1, 1, 3)
    item.add_event(cfg, "click", None, 90 * 60_000)  # out of order, inside the 1h window
    f = item.popularity_features(cfg)
    assert (f["pop_1h"], f["pop_1h_click"], f["pop_24h"]) == (2, 1, 4)
    assert f["trending"] == (2 + 1) / (4 * 3600 / 86400 + 1)


def test_covisitation_is_symmetric_and_bounded_by_window_and_memory():
    cfg = FeatureSettings(covisit_window_s=60, covisit_max_recent=2)
    user, items = UserState(), {}
    events = [("a", 0), ("b", 10_000), ("c", 20_000), ("d", 200_000)]  # d is outside the window
    for i, (item, t) in enumerate(events):
        for update in item_updates(item, "view", None, t, user.add(cfg, f"e{i}", item, "view", None, t)):
            item_step(cfg, items.setdefault(update[0], ItemState(len(cfg.windows))), update)
    assert items["a"].covisit == {"b": 1, "c": 1}
    assert items["c"].covisit == {"a": 1, "b": 1}
    assert items["d"].covisit == {}


def test_incremental_top_k_equals_a_full_sort_and_survives_encoding():
    """Both update paths of the top K (re-sort when many changed, insert when few did) and both
    state encodings (to_bytes for Flink state, pickle for checkpoints written before it)."""
    for top_k, read_every in [(5, 5), (12, 1)]:
        cfg = FeatureSettings(covisit_top_k=top_k)
        rng = random.Random(7)
        item = ItemState(len(cfg.windows))
        for step in range(300):
            item.add_covisits([f"i{rng.randint(0, 40)}" for _ in range(rng.randint(1, 4))])
            if step % 17 == 0:
                item = pickle.loads(pickle.dumps(item))
            if step % 13 == 0:
                item = ItemState.from_bytes(item.to_bytes())
            if step % read_every == 0:
                full = sorted(item.covisit.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
                got = item.covisit_features(cfg)
                assert list(zip(got["covisit_items"], got["covisit_counts"])) == full


def test_state_encoding_round_trips_every_feature():
    cfg = FeatureSettings()
    user, items = UserState(), {}
    rng = random.Random(3)
    for i in range(200):
        item_id = f"i{rng.randint(0, 30)}"
        kind = rng.choice(["view", "click", "rating"])
        value = float(rng.randint(1, 5)) if kind == "rating" else None
        t = i * 37_000
        previous = user.add(cfg, f"e{i}", item_id, kind, value, t)
        for update in item_updates(item_id, kind, value, t, previous):
            item_step(cfg, items.setdefault(update[0], ItemState(len(cfg.windows))), update)
    again = UserState.from_bytes(user.to_bytes())
    assert again.stats.features() == user.stats.features() and again.recent_features() == user.recent_features()
    _ = again.add(cfg, "next", "i1", "view", None, 10**9)  # decoded state keeps working (tuples compare)
    for item in items.values():
        decoded = ItemState.from_bytes(item.to_bytes())
        assert decoded.popularity_features(cfg) == item.popularity_features(cfg)
        assert decoded.covisit_features(cfg) == item.covisit_features(cfg)
        assert decoded.stats.features() == item.stats.features()


def test_recent_items_keep_the_newest_n_by_event_time_then_id():
    cfg = FeatureSettings(recent_items=3)
    user = UserState()
    for event_id, item, t in [("e1", "a", 5), ("e2", "b", 1), ("e4", "c", 5), ("e3", "d", 9), ("e5", "e", 0)]:
        user.add(cfg, event_id, item, "click", None, t)
    assert user.recent_features()["recent_items"] == ["d", "c", "a"]


def test_co_visit_counts_are_encoded_incrementally_and_decode_exactly():
    """to_bytes keeps the JSON of the counts and appends the items counted since (a popular
    item has thousands of counts and gets a few increments per micro-batch)."""
    import orjson

    rng = random.Random(11)
    item, expected, with_log = ItemState(1), {}, 0
    for _ in range(400):
        counted = [f"i{rng.randint(0, 60)}" for _ in range(rng.randint(1, 5))]
        item.add_covisits(counted)
        for other in counted:
            expected[other] = expected.get(other, 0) + 1
        encoded = item.to_bytes()
        with_log += bool(orjson.loads(encoded)[8])
        assert ItemState.from_bytes(encoded).covisit == expected
        if rng.random() < 0.05:  # as after a restore: a decoded state goes on encoding
            item = ItemState.from_bytes(encoded)
    assert with_log > 300  # most encodings reused the counts' JSON


def test_encodings_between_updates_always_decode_to_the_current_features():
    """to_bytes and online_bytes reuse the JSON of the buckets and of the top K between the
    updates that change them (an own event; a refresh): every encoding must still be current."""
    cfg = FeatureSettings(covisit_top_k=4)
    rng = random.Random(5)
    item = ItemState(len(cfg.windows))
    for step in range(300):
        if rng.random() < 0.3:
            item.add_event(cfg, rng.choice(["view", "click"]), None, step * 600_000)
        else:
            item.add_covisits([f"i{rng.randint(0, 20)}" for _ in range(rng.randint(1, 3))])
        if rng.random() < 0.3:
            item.covisit_features(cfg)  # a refresh of the top K between encodings
        for encoded in (item.to_bytes(), item.online_bytes(cfg)):
            decoded = ItemState.from_bytes(encoded)
            assert decoded.popularity_features(cfg) == item.popularity_features(cfg)
            assert decoded.covisit_features(cfg) == item.covisit_features(cfg)
