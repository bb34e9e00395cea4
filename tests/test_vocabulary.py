"""The event vocabulary: aliases, labels and weights from the settings, read the same way by
validation, the stream job's decoding, the nightly labels and the training loss."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import torch

from infra.settings import Settings
from models.config import ModelSettings
from models.ranking import Batch, build_model, dense_optimizer, train_step
from streaming.events import InvalidEvent, decode_event, validate_and_encode
from streaming.job.micro_batch import MicroBatch, read_batch
from streaming.lateness import Lateness
from streaming.vocabulary import EventVocabulary, parse_event_types


def _vocab(**events: object) -> EventVocabulary:
    return EventVocabulary.from_settings(Settings(events=events))


def test_defaults_keep_todays_labels() -> None:
    vocab = EventVocabulary.from_settings(Settings())
    got = {t: vocab.label(t, v) for t, v in [("click", None), ("add_to_cart", None), ("purchase", None),
                                              ("like", None), ("share", None)]}
    assert got == dict.fromkeys(got, 1.0)
    assert math.isnan(vocab.label("view", None)) and vocab.label("rating", 4.0) == 1.0 and vocab.label("rating", 3.5) == 0.0
    assert vocab.weight_array(["click", "view"]) is None  # nothing weighted: training stays unweighted


def test_settings_change_what_a_type_means() -> None:
    vocab = _vocab(types={"view": {"label": "negative"}, "share": {"label": "unlabelled"}, "purchase": {"weight": 4}})
    types = ["view", "share", "purchase", "rating", "rating"]
    values = np.array([np.nan, np.nan, np.nan, 5.0, 1.0])
    labels = vocab.label_array(types, values)
    assert labels[0] == 0.0 and math.isnan(labels[1]) and labels[2:].tolist() == [1.0, 1.0, 0.0]
    assert [vocab.label(t, None if math.isnan(v) else v) for t, v in zip(types, values)][2:] == [1.0, 1.0, 0.0]
    assert vocab.weight_array(types).tolist() == [1.0, 1.0, 4.0, 1.0, 1.0]


def test_the_deprecated_positive_types_still_decide() -> None:
    vocab = EventVocabulary.from_settings(Settings(training={"positive_types": ["purchase"]}))
    assert vocab.label("purchase", None) == 1.0 and math.isnan(vocab.label("click", None))
    assert vocab.label("rating", 5.0) == 1.0


@pytest.mark.parametrize("events, message", [
    ({"aliases": {"pv": "vue"}}, "'vue' is not an event type; map it to one of view, click"),
    ({"aliases": {"view": "click"}}, "'view' is itself an event type"),
    ({"types": {"pv": {"label": "positive"}}}, "['pv'] are not event types"),
])
def test_a_bad_vocabulary_says_what_to_write(events: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        _vocab(**events)
    assert message in str(err.value)


def test_parse_event_types_refuses_a_half_mapping() -> None:
    assert parse_event_types("") == {}
    with pytest.raises(ValueError, match="write yours=engine_type"):
        parse_event_types("pv=view,cart")


def test_aliases_map_on_every_path_and_the_wire_carries_the_engines_type() -> None:
    aliases = _vocab(aliases={"pv": "view"}).aliases
    raw = {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "pv", "event_time": 1}
    event, payload = validate_and_encode(raw, aliases)
    assert event.event_type.value == "view" and orjson.loads(payload)["event_type"] == "view"
    assert validate_and_encode({**raw, "user_id": 7}, aliases)[0].event_type.value == "view"  # the canonical path too
    assert decode_event(orjson.dumps(raw), aliases=aliases).event_type.value == "view"
    with pytest.raises(InvalidEvent) as err:
        decode_event(orjson.dumps(raw))
    assert err.value.reason == "unknown_event_type" and "'pv' is not an event type" in err.value.detail


def test_the_stream_job_reads_a_logs_own_names_and_dead_letters_unknown_ones() -> None:
    raw = {"event_id": "e1", "user_id": "u", "item_id": "i", "event_type": "pv", "event_time": 10_000}
    other = {**raw, "event_id": "e2", "event_type": "teleport"}
    batch = MicroBatch(0, [(0, orjson.dumps(raw)), (1, orjson.dumps(other))], None)
    letters: list[tuple] = []
    read = read_batch(batch, Lateness(slack_ms=100), 10_000, 0, lambda *a: letters.append(a[2:4]),
                      _vocab(aliases={"pv": "view"}).aliases)
    assert [(r.event_id, r.event_type) for r in read.rows] == [("e1", "view")]
    assert letters == [(1, "unknown_event_type")]


def test_a_weight_counts_its_rows_that_many_times_in_the_loss() -> None:
    """Weights 1,1,0,0 train exactly as the first two rows alone (and differ from no weights)."""
    cfg = ModelSettings(embedding_dim=4, user_buckets=16, item_buckets=16, dense_arch=[4], over_arch=[8])
    rng = np.random.default_rng(0)
    users, items = ["a", "b", "c", "d"], ["1", "2", "3", "4"]
    dense = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def step(rows: list[int], weights: list[float] | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(cfg, n_dense=3)
        batch = Batch.build(cfg, [users[i] for i in rows], [items[i] for i in rows], [[] for _ in rows], dense[rows], labels[rows])
        batch.weights = None if weights is None else torch.tensor(weights)
        train_step(model, dense_optimizer(model, cfg), batch)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.allclose(step([0, 1, 2, 3], [1.0, 1.0, 0.0, 0.0]), step([0, 1], None), atol=1e-6)
    assert not torch.allclose(step([0, 1, 2, 3], [1.0, 1.0, 0.0, 0.0]), step([0, 1, 2, 3], None), atol=1e-6)


def test_the_streaming_examples_carry_the_type_weight() -> None:
    """The online learner and the replay make their rows with the same weights as the nightly job:
    the event's row (pointwise) or its whole list (listwise) weighs its type's weight, sampled
    negatives of a pointwise row weigh 1."""
    from batch.event_examples import EventExamples
    from features.live import LiveFeatures
    from features.model_inputs import FeatureSpec
    from infra.settings import FeatureSettings
    from streaming.events import Event

    vocab = _vocab(types={"purchase": {"weight": 3}})
    spec = FeatureSpec(("user_stats:n_events",), ("item_stats:n_events",), "user_recent:recent_items", "d")
    events = [Event(event_id=f"e{n}", user_id="u", item_id=str(n), event_type=t, event_time=1_000 * n)
              for n, t in enumerate(["click", "click", "purchase", "view"])]
    for objective, expected in [("pointwise", [3.0, 1.0, 1.0]), ("listwise", [3.0, 3.0, 3.0])]:
        settings = Settings(training={"objective": objective, "negatives_per_positive": 2, "hard_negatives": 0})
        live = LiveFeatures(FeatureSettings(), spec)
        examples = EventExamples(settings.training, vocab, live, {"a": 1, "b": 1, "c": 1})
        made = []
        for n, e in enumerate(events):
            made.append(examples.make(e, (n,)))
            live.add(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time)
        assert made[3] == []  # a view makes no rows
        assert {r[6] for r in made[0]} == {1.0}
        assert [r[6] for r in made[2]] == expected
