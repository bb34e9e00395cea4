"""The replay's ``served`` strategy is the API's own code: the same lists as from Redis."""

from __future__ import annotations

import numpy as np
import torch

from batch.backfill import Backfill, write_online
from batch.evaluate.served_replay import ServedReplay
from features.live import LiveFeatures
from features.model_inputs import feature_spec
from features.store import apply
from models.ranking import build_model
from models.similarity import CoOccurrence
from serving.item_snapshot import ItemSnapshotter
from serving.recommender import Recommender
from streaming.replay import load_events
from tests.conftest import isolated

EVENTS = 3000


def test_served_replay_returns_what_the_api_returns_from_redis(stack_settings, ml100k_path, tmp_path):
    s = isolated(stack_settings, tmp_path)
    s = s.model_copy(update={"model": s.model.model_copy(update={"user_buckets": 2000, "item_buckets": 2000,
                                                                  "embedding_dim": 8, "dense_arch": [8]})})
    apply(s)
    spec = feature_spec(s)
    events = sorted(load_events(ml100k_path).events, key=lambda e: (e.event_time, e.event_id))[:EVENTS]
    live = LiveFeatures(s.features, spec)
    co = CoOccurrence(s.model.similarity_pair_with)
    last_seen: dict[str, int] = {}
    for e in events:
        live.add(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time)
        co.learn(e.user_id, e.item_id)
        last_seen[e.user_id] = last_seen[e.item_id] = e.event_time
    fold = live.fold  # what the stream job would have written: the backfill's writer puts it in Redis
    write_online(s, Backfill(0, len(events), 0, fold.users, fold.items, {u: last_seen[u] for u in fold.users},
                             {i: last_seen.get(i, 0) for i in fold.items}))

    torch.manual_seed(0)
    model = build_model(s.model, spec.n_dense)
    catalogue: dict[str, int] = {}
    for e in events:
        catalogue[e.item_id] = catalogue.get(e.item_id, 0) + 1
    replay = ServedReplay(s, spec, live)
    replay.publish(model, replay_ids(s), catalogue, co.freeze(s.model.similarity_top_k))
    served = replay._served()
    api, snapshots = Recommender(s), ItemSnapshotter(s, lambda: served, 1.0)
    snapshot = snapshots.refresh(served)
    users = list(dict.fromkeys(e.user_id for e in events[::-1]))[:15] + ["never-seen-user"]
    sources = set()
    for user in users:
        exclude = frozenset(i for i in list(catalogue)[:3])
        ours = replay.recommend(user, 10, exclude)
        theirs = api.recommend(served, snapshot, user, 10, exclude=exclude)
        assert [i.item_id for i in ours.items] == [i.item_id for i in theirs.items], user
        assert np.allclose([i.score for i in ours.items], [i.score for i in theirs.items], rtol=1e-5)
        assert [i.sources for i in ours.items] == [i.sources for i in theirs.items]
        assert ours.recent_items == theirs.recent_items
        sources |= {src for i in ours.items for src in i.sources}
    assert {"similar", "popular"} <= sources


def replay_ids(s):  # noqa: ANN001, ANN201 - the hashed mapping of these settings
    from models.id_table import id_rows

    return id_rows(s.model)
