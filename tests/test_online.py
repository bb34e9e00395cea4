"""The streaming trainer against the real broker, Delta table and model registry.

A nightly version is trained on the first ml-100k events (landed in Delta with their real Kafka
partitions and offsets, as the stream job lands them); newer events are only in the topic.
"""

from __future__ import annotations

from collections import Counter

import pytest

from batch.online import learn
from batch.nightly import retrain
from batch.online.online_learner import ONLINE, OnlineLearner
from features.store import apply
from models.registry import ModelRegistry
from streaming.events import Event, EventType
from streaming.lake import land_topic
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.topics import scan_topic
from tests.conftest import isolated

NIGHTLY_EVENTS = 8000


def _produce(settings, events) -> None:
    with EventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()


def _end_offsets(settings) -> dict[int, int]:
    ends: dict[int, int] = {}
    scan_topic(settings, settings.topics.events, visit=lambda r: ends.__setitem__(r.partition, r.offset + 1))
    return ends


class RecordingLearner(OnlineLearner):
    """Remembers every (partition, offset) it trained, across restarts of the loop."""

    trained_log: Counter = Counter()

    def offer(self, partition, offset, event):  # noqa: ANN001, ANN201
        trained = super().offer(partition, offset, event)
        if trained:
            RecordingLearner.trained_log[(partition, offset)] += 1
        return trained


@pytest.fixture(scope="module")
def nightly(stack_settings, tmp_path_factory):
    s = isolated(stack_settings, tmp_path_factory.mktemp("online"))
    s = s.model_copy(update={"online": s.online.model_copy(update={"publish_every_events": 100_000, "batch_size": 64}),
                             "training": s.training.model_copy(update={"epochs": 1})})
    apply(s)
    events = sorted(load_events(s.ml100k_path).events, key=lambda e: (e.event_time, e.event_id))
    _produce(s, events[:NIGHTLY_EVENTS])
    assert land_topic(s) == NIGHTLY_EVENTS
    result = retrain.run(s, progress=False)
    assert result.promoted
    return s, events, result.version


def test_learner_trains_only_events_the_nightly_model_has_not_seen(nightly):
    s, events, v_nightly = nightly
    _produce(s, events[NIGHTLY_EVENTS:NIGHTLY_EVENTS + 1500])
    report = learn.run(s, idle_exit_s=2.0, learner=RecordingLearner(s))
    assert report.trained == 1500 and report.consumed == 1500  # the first 8,000 are the nightly model's
    registry = ModelRegistry(s.paths.models_dir)
    (published,) = report.published
    assert registry.served() == published.version
    meta = registry.meta(published.version)
    assert meta["kind"] == ONLINE and meta["base_version"] == v_nightly
    assert meta[ONLINE]["nightly_version"] == v_nightly
    assert {int(p): o for p, o in meta[ONLINE]["offsets"].items()} == _end_offsets(s)
    # dense weights frozen: the delta holds embedding rows only, and some of them
    assert published.rows_changed and all("embedding_bags" in k for k, n in published.rows_changed.items() if n)
    assert sum(published.rows_changed.values()) > 0
    registry.verify(published.version)
    new_items = {e.item_id for e in events[NIGHTLY_EVENTS:NIGHTLY_EVENTS + 1500]}
    items, _ = registry.catalogue(published.version)
    assert new_items <= set(items)


def test_restart_resumes_from_the_checkpointed_offsets(nightly):
    s, events, _ = nightly
    first, second = NIGHTLY_EVENTS + 1500, NIGHTLY_EVENTS + 2500
    _produce(s, events[first:second])
    RecordingLearner.trained_log.clear()
    stopped = learn.run(s, max_events=400, learner=RecordingLearner(s))  # "crash" after 400, published on the way out
    assert stopped.trained == 400
    resumed = learn.run(s, idle_exit_s=2.0, learner=RecordingLearner(s))
    assert resumed.trained == 600  # exactly the rest
    log = RecordingLearner.trained_log
    assert len(log) == 1000 and set(log.values()) == {1}  # every new event trained once, none twice
    registry = ModelRegistry(s.paths.models_dir)
    meta = registry.meta(registry.served())
    assert {int(p): o for p, o in meta[ONLINE]["offsets"].items()} == _end_offsets(s)


def test_a_new_item_enters_the_catalogue_and_its_embedding_moves(nightly):
    s, events, _ = nightly
    registry = ModelRegistry(s.paths.models_dir)
    before = registry.served()
    last_t = events[NIGHTLY_EVENTS + 2500].event_time
    users = sorted({e.user_id for e in events[:NIGHTLY_EVENTS]})[:40]
    fresh = [Event(event_id=f"new-{i}", user_id=u, item_id="brand-new-item", event_type=EventType.RATING, value=5.0,
                   event_time=last_t + 1000 * i) for i, u in enumerate(users)]
    _produce(s, fresh)
    report = learn.run(s, idle_exit_s=2.0)
    assert report.trained == len(fresh)
    (published,) = report.published
    items, counts = registry.catalogue(published.version)
    assert dict(zip(items, counts))["brand-new-item"] == len(fresh)
    assert "brand-new-item" not in registry.catalogue(before)[0]
    assert published.rows_changed  # its row (and the raters' rows) moved


def test_a_nightly_version_supersedes_the_online_ones(nightly):
    s, events, v_first = nightly
    registry = ModelRegistry(s.paths.models_dir)
    online_served = registry.served()
    assert registry.meta(online_served)["kind"] == ONLINE
    land_topic(s)  # the stream job's lake sink caught up: the next nightly sees everything so far
    result = retrain.run(s, progress=False, promote=False)
    meta = registry.meta(result.version)
    assert meta["compared_version"] == v_first  # not the online version, which trained on this validation period
    assert meta["base_version"] == online_served  # servers merge the nightly delta onto what they hold
    _produce(s, events[NIGHTLY_EVENTS + 2500:NIGHTLY_EVENTS + 2800])
    promoted = []

    def promote_nightly_once() -> bool:  # the nightly job promotes while the learner runs
        if not promoted:
            registry.promote(result.version)
            promoted.append(result.version)
        return False

    report = learn.run(s, idle_exit_s=2.0, stop=promote_nightly_once)
    assert report.rebases == 1
    assert report.trained == 300  # on top of the nightly version: only what its table did not hold
    latest = registry.meta(registry.served())
    assert latest["kind"] == ONLINE and latest["base_version"] == result.version
    assert latest[ONLINE]["nightly_version"] == result.version


def test_a_publish_racing_a_nightly_promotion_does_not_undo_it(nightly):
    """The nightly job promotes between the learner's last check and its publish: the learner's
    version must not replace the nightly one (it rebases instead)."""
    s, events, v_nightly = nightly
    registry = ModelRegistry(s.paths.models_dir)
    online_served = registry.served()
    learner = OnlineLearner(s)
    learner.start()
    e = events[NIGHTLY_EVENTS + 2800]
    assert learner.offer(0, 10**9, e)  # one trained event: a publish is pending
    registry.promote(v_nightly)  # the nightly job wins the race
    try:
        versions_before = registry.versions()
        assert learner.publish() is None and learner.superseded()
        assert registry.served() == v_nightly and registry.versions() == versions_before
        assert not registry.promote(online_served, only_if_serving=online_served)  # compare and set
    finally:
        registry.promote(online_served)  # the next tests continue from the online version


def test_managed_ids_admit_after_k_occurrences_and_expire(stack_settings, tmp_path):
    """model.ids=managed end to end: nightly tables from the training events, the served model
    looks rows up in them, the learner admits a new user on its second event and expires ids
    unseen for model.id_ttl_days at publish time."""
    from models.id_table import SHARED_ROW, model_ids
    from serving.hot_swap import ModelLoader
    from features.model_inputs import feature_spec

    s = isolated(stack_settings, tmp_path)
    s = s.model_copy(update={
        "model": s.model.model_copy(update={"ids": "managed", "id_min_count": 2, "id_ttl_days": 30.0,
                                            "user_buckets": 3000, "item_buckets": 3000}),
        "training": s.training.model_copy(update={"epochs": 1, "validation_days": 1.0}),
        "online": s.online.model_copy(update={"publish_every_events": 100_000})})
    apply(s)
    events = sorted(load_events(s.ml100k_path).events, key=lambda e: (e.event_time, e.event_id))[:3000]
    _produce(s, events)
    land_topic(s)
    nightly = retrain.run(s, progress=False).version
    registry = ModelRegistry(s.paths.models_dir)
    ids = model_ids(s.model, registry.path(nightly))
    users = Counter(e.user_id for e in events)
    assert ids.managed and len(ids.users) > 0
    assert set(ids.users.row_of) <= {u for u, n in users.items() if n >= 2}  # the frequency filter
    assert len(set(ids.users.row_of.values())) == len(ids.users)  # no two users share a row
    served = ModelLoader(registry, lambda: feature_spec(s)).full(nightly)
    known = next(iter(ids.users.row_of))
    assert served.ids.users.rows([known, "never-seen"]).tolist() == [ids.users.row_of[known], SHARED_ROW]

    later = events[-1].event_time + 60 * 86_400_000  # two months on: everyone else is past the 30-day TTL
    newbie = [Event(event_id=f"newbie-{i}", user_id="newbie", item_id=events[i].item_id, event_type=EventType.RATING,
                    value=5.0, event_time=later + i * 1000) for i in range(3)]
    _produce(s, newbie[:1])
    first = learn.run(s, idle_exit_s=2.0)
    assert first.trained == 1
    after_one = model_ids(s.model, registry.path(registry.served()))
    assert "newbie" not in after_one.users.row_of and after_one.users.waiting["newbie"][0] == 1
    _produce(s, newbie[1:])
    second = learn.run(s, idle_exit_s=2.0)
    assert second.trained == 2
    after_three = model_ids(s.model, registry.path(registry.served()))
    assert "newbie" in after_three.users.row_of  # admitted on its second event
    assert set(after_three.users.row_of) == {"newbie"}  # everyone else expired (unseen for > 30 days)


def test_learner_service_starts_publishes_and_stops_without_losing_events(nightly):
    import time

    from batch.online import learn_runner

    s, events, _ = nightly
    s = s.model_copy(update={"online": s.online.model_copy(update={"publish_every_events": 100, "publish_every_s": 3600})})
    registry = ModelRegistry(s.paths.models_dir)
    pid = learn_runner.start(s)

    def wait_for(check, what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    try:
        assert learn_runner.running_pid(s) == pid
        before = registry.served()
        _produce(s, events[NIGHTLY_EVENTS + 2800:NIGHTLY_EVENTS + 2900])  # 100 events: one publish is due
        wait_for(lambda: registry.served() != before, "the learner published and promoted a version")
        published = registry.served()
        _produce(s, events[NIGHTLY_EVENTS + 2900:NIGHTLY_EVENTS + 2950])  # 50: trained, not yet due
        ends = _end_offsets(s)
        wait_for(lambda: {int(p): o for p, o in learn_runner.read_status(s)["offsets"].items()} == ends,
                 "the learner trained the last 50 events")
        assert registry.served() == published and learn_runner.read_status(s)["pid"] == pid
    finally:
        assert learn_runner.stop(s)
    assert learn_runner.running_pid(s) is None
    assert learn_runner.read_status(s)["state"] == "stopped"
    final = registry.served()
    assert final != published  # stopping published the 50 trained events ...
    assert {int(p): o for p, o in registry.meta(final)[ONLINE]["offsets"].items()} == ends  # ... and nothing was lost


def test_events_the_stream_job_calls_late_are_not_trained(nightly):
    """The stream job's lateness rule, decided the same way: late events reach no feature and no
    nightly training set, so the learner skips them too (and moves past them)."""
    s, events, _ = nightly
    fresh = events[NIGHTLY_EVENTS + 2950:NIGHTLY_EVENTS + 2955]
    late = [Event(event_id=f"late-{i}", user_id=e.user_id, item_id=e.item_id, event_type=EventType.RATING, value=5.0,
                  event_time=events[0].event_time) for i, e in enumerate(fresh)]  # months older than anything recent
    _produce(s, [x for pair in zip(late, fresh) for x in pair])
    report = learn.run(s, idle_exit_s=2.0, learner=RecordingLearner(s))
    assert report.trained == 5 and report.skipped_late == 5
    registry = ModelRegistry(s.paths.models_dir)
    assert {int(p): o for p, o in registry.meta(registry.served())[ONLINE]["offsets"].items()} == _end_offsets(s)


def test_a_recreated_topic_is_trained_from_its_first_offset(nightly):
    """A restarted in-memory broker (or a deleted and recreated topic) numbers records from 0
    again: neither the online checkpoint's offsets nor the lake rows of the earlier incarnation
    may hide the new records from the learner. (Last in this file: it moves the served model to
    the new incarnation.)"""
    from infra.services import ensure_topics

    s, events, _ = nightly
    again = s.model_copy(update={"topics": s.topics.model_copy(update={"events": f"{s.topics.events}-again"}),
                                 "stream": s.stream.model_copy(update={"topic_epoch": "again"})})
    ensure_topics(again)
    registry = ModelRegistry(s.paths.models_dir)
    assert registry.meta(registry.served())["kind"] == ONLINE  # its offsets count the first incarnation
    start = NIGHTLY_EVENTS + 3000
    _produce(again, events[start:start + 300])
    assert land_topic(again) == 300  # the lake holds them too: offsets 0..299 a second time
    report = learn.run(again, idle_exit_s=2.0)
    assert report.trained == 300
    meta = registry.meta(registry.served())
    assert meta[ONLINE]["topic_epoch"] == "again"
    assert {int(p): o for p, o in meta[ONLINE]["offsets"].items()} == _end_offsets(again)

    nightly_version = retrain.run(again, progress=False, promote=False).version  # trained on both incarnations
    registry.promote(nightly_version)
    _produce(again, events[start + 300:start + 400])
    after_nightly = learn.run(again, idle_exit_s=2.0)
    assert after_nightly.trained == 100  # exactly what the nightly table lacked, in the new incarnation
