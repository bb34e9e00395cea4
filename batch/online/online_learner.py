"""The streaming trainer: the served model, trained on each new event, published as small deltas.

The nightly job is the floor; between two nightly runs the learner keeps the model moving:

* **Where it starts.** From the served version. A nightly version was trained on the Delta
  ``events`` table at ``table_version``: the learner folds that table version through the
  feature definitions (``features.compute``, as the stream job and the backfill do) and starts
  consuming the topic right after the last Kafka offset per partition the table holds. An online
  version carries its own offsets (``meta["online"]["offsets"]``): the learner folds the lake up to
  them (and re-reads from the topic, features only, whatever the lake does not hold yet), then
  trains from exactly those offsets. So offsets are checkpointed *with the model*, and a restart
  trains no event twice and skips none. Offsets belong to one incarnation of the topic
  (``streaming.lake.topic_epoch``; a restarted in-memory broker starts a new one at offset 0):
  the lake tags each row with it, and a checkpoint from an earlier incarnation means every
  record of the current topic is new to the model.
* **Examples.** The same labels as the nightly job (``streaming.vocabulary``), features read
  from the state just before the event is folded in (what the point-in-time join gives a training
  row), and ``training.negatives_per_positive`` uniform negatives per positive from the catalogue
  (seeded by the event's partition and offset, so a replay draws the same ones).
* **Steps.** Embedding rows train with row-wise Adagrad in backward at ``online.sparse_lr``; the
  dense weights stay frozen unless ``online.train_dense`` (then deltas carry only touched rows).
* **Publishing.** Every ``online.publish_every_s`` or ``online.publish_every_events``: a registry
  version (``kind: online``) with a delta from the previous one, promoted when ``online.promote``;
  the API merges the delta and hot-swaps. Older online versions are pruned
  (``online.keep_versions``); nightly versions never are.
* **Nightly supersedes.** When the serving pointer moves away from the learner's latest version
  (the nightly job, or an operator's rollback), it rebases onto that version: reload, refold,
  and train the events after that version's offsets on top of it. Its own promotions are
  compare-and-set (``ModelRegistry.promote(only_if_serving=...)``), so a publish racing a nightly
  promotion never undoes it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from batch import backfill
from batch.event_examples import EventExamples
from features.compute import InMemoryFeatures
from features.live import LiveFeatures
from features.model_inputs import FeatureSpec
from infra.settings import Settings
from batch.nightly.training_lists import list_size
from models.id_table import IDS_FILE, model_ids
from models.similarity import SIMILARITY_FILE, SIMILARITY_SOURCE, SimilarityTable
from models.incremental import IncrementalModel
from models.registry import ModelRegistry, code_version
from serving.rollout import on_canary, serve_new_version
from streaming.events import Event
from streaming.lake import topic_epoch
from streaming.lateness import Lateness
from streaming.vocabulary import EventVocabulary

log = logging.getLogger(__name__)

ONLINE = "online"
WARM_START_FROM = 100  # a new item's row starts at the mean of this many most trained-on items' rows


@dataclass
class Position:
    """Where the learner is in the topic: the next offset to train per partition."""

    offsets: dict[int, int] = field(default_factory=dict)

    def to_meta(self) -> dict[str, int]:
        return {str(p): o for p, o in sorted(self.offsets.items())}

    @classmethod
    def from_meta(cls, raw: dict) -> "Position":
        return cls({int(p): int(o) for p, o in raw.items()})


@dataclass
class PublishResult:
    version: str
    events: int  # events trained since the previous publish
    examples: int
    rows_changed: dict[str, int]
    ms: float


@dataclass
class LakeFold:
    """Feature state folded from the lake, and where the current topic incarnation stands in it."""

    features: InMemoryFeatures
    next_offsets: dict[int, int]  # per partition: the offset after the last row read
    max_event_time: dict[int, int]  # per partition: where the stream job's lateness rule stood


def fold_lake(settings: Settings, table_version: int | None, below: dict[int, int] | None) -> LakeFold:
    """Feature state from the Delta events table (the backfill's fold, in the stream job's order; at
    ``table_version``, default latest; of the current topic incarnation only rows below
    ``below[partition]`` when given)."""
    fold = InMemoryFeatures(settings.features)
    try:
        done = backfill.compute(settings, version=table_version, progress=False, below=below,
                                epoch=topic_epoch(settings))
    except FileNotFoundError:  # no events table yet: nothing to fold
        return LakeFold(fold, {}, {})
    fold.users, fold.items = done.users, done.items
    return LakeFold(fold, done.next_offsets, done.max_event_time)


class OnlineLearner:
    """Incremental training from the served version; see the module docstring."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.paths.models_dir)
        self._lateness = Lateness.for_settings(settings.stream)
        self.late_skipped = 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._since_publish_events = 0
        self._since_publish_examples = 0
        self._last_publish = time.monotonic()

    # -- start / rebase ------------------------------------------------------------------------
    def start(self) -> dict[int, int]:
        """Load the served version and its feature state; returns where to consume from per
        partition (events below ``self.position`` there are folded, not trained)."""
        served = self.registry.served()
        if served is None:
            raise RuntimeError("nothing is served yet: run `recsys retrain` first, then `recsys learn`")
        state, meta = self.registry.load(served)
        self.version, self.meta, self.started_from = served, meta, served
        self.epoch = topic_epoch(self.settings)  # the topic incarnation the offsets below belong to
        self.base_nightly = meta.get(ONLINE, {}).get("nightly_version", served)
        o = self.settings.online
        self.spec = FeatureSpec.from_dict(meta["features"])
        cfg = meta.model_settings
        group = list_size(self.settings.training) if self.settings.training.objective == "listwise" else 1
        self.learning = IncrementalModel(state, cfg, self.spec.n_dense, o.sparse_lr, o.train_dense, o.batch_size,
                                         model_ids(cfg, self.registry.path(served)), group)
        self.similarity_source = meta.get(SIMILARITY_SOURCE, served)
        table = self.registry.path(self.similarity_source) / SIMILARITY_FILE
        self.similarity = (SimilarityTable.load(table, self.similarity_source) if table.is_file() else SimilarityTable.empty()) \
            if cfg.cross_features else None
        self.published_state = self.learning.state()
        items, counts = self.registry.catalogue(served)
        self._catalogue_rows = set(self.learning.ids.items.rows(items).tolist())
        self._clock_ms = 0  # newest event time trained: expiry runs on event time
        if ONLINE in meta:  # our own checkpoint: fold the lake up to its offsets
            self.position = Position.from_meta(meta[ONLINE]["offsets"])
            if meta[ONLINE].get("topic_epoch", self.epoch) != self.epoch:
                log.warning("the events topic was recreated since %s was published (incarnation %s, now %s): "
                            "training every record of the current topic", served, meta[ONLINE]["topic_epoch"],
                            self.epoch)
                self.position = Position()
            lake = fold_lake(self.settings, None, self.position.offsets)
        else:  # a nightly version: its table version says what it was trained on
            lake = fold_lake(self.settings, int(meta["table_version"]), None)
            self.position = Position(dict(lake.next_offsets))
        self.features = LiveFeatures(self.settings.features, self.spec, lake.features)
        self._lateness = Lateness.for_settings(self.settings.stream, dict(lake.max_event_time))
        self.examples = EventExamples(self.settings.training, EventVocabulary.from_settings(self.settings), self.features, dict(zip(items, counts)), self._warm_start,
                                      self.similarity)  # the version's table: what the API ranks with
        self._reset_counters()
        return {p: min(lake.next_offsets.get(p, 0), o) for p, o in self.position.offsets.items()}

    def superseded(self) -> bool:
        """True when the serving pointer moved away from this learner's latest version (to a nightly,
        or an operator's rollback, even to an older online version): training goes on from there.
        (A learner that does not promote follows the version it started from.)"""
        served = self.registry.served()
        expected = self.version if self.settings.online.promote else self.started_from
        if served is None or served == expected:
            return False
        return not (self.settings.online.promote and on_canary(self.settings, self.version))  # a guarded rollout's canary

    # -- learning ------------------------------------------------------------------------------
    def offer(self, partition: int, offset: int, event: Event) -> bool:
        """One consumed event: trained when at or past the position, folded into features always,
        unless late. Returns whether it was trained.

        Late is the stream job's rule (streaming.lateness), decided the same way: the job keeps
        late events out of every feature and the nightly job out of training; so does the learner.
        """
        train = offset >= self.position.offsets.get(partition, 0)
        if self._lateness.observe(partition, event.event_time):
            if train:
                self.position.offsets[partition] = offset + 1
                self.late_skipped += 1
            return False
        if train:
            self.learning.admit(event.user_id, event.item_id, event.event_time, self.examples.items[:WARM_START_FROM])
            self._clock_ms = max(self._clock_ms, event.event_time)
            rows = self.examples.make(event, (partition, offset))
            self.learning.add(rows)
            self.position.offsets[partition] = offset + 1
            self._since_publish_events += 1
            self._since_publish_examples += len(rows)
        self.features.add(event.event_id, event.user_id, event.item_id, event.event_type.value, event.value,
                          event.event_time)
        return train

    def _warm_start(self, item_id: str) -> None:
        """A new item's row starts at the mean of the most trained-on items' rows, not at its random
        init: it is ranked like a typical popular item from its first delta on, and its own events
        move it from there."""
        self.learning.start_item(item_id, self.examples.items[:WARM_START_FROM], self._catalogue_rows)

    # -- publishing ----------------------------------------------------------------------------
    def due(self) -> bool:
        o = self.settings.online
        if not self._since_publish_events:
            return False
        return (self._since_publish_events >= o.publish_every_events
                or time.monotonic() - self._last_publish >= o.publish_every_s)

    def publish(self) -> PublishResult | None:
        """Train what is pending, then write a version with its delta (and promote it); None when
        nothing was trained since the last one, or when another version (a nightly, a rollback) was
        promoted since this learner last did: then :meth:`superseded` is true and the caller rebases."""
        if not self._since_publish_events:
            return None
        if self.settings.online.promote and self.superseded():
            return None  # a nightly (or rollback) won: rebase onto it, which retrains these events on top of it
        started = time.perf_counter()
        self.learning.flush()
        state = self.learning.state()
        meta = {k: v for k, v in self.meta.items() if k not in ("version", "created_at", "base_version")}
        meta[SIMILARITY_SOURCE] = self.similarity_source  # the nightly's table, not copied
        meta.update({"kind": ONLINE, "code_version": code_version(), ONLINE: {
            "offsets": self.position.to_meta(), "nightly_version": self.base_nightly, "previous": self.version,
            "events": self._since_publish_events, "examples": self._since_publish_examples,
            "topic": self.settings.topics.events, "topic_epoch": self.epoch}})
        self.learning.expire(self._clock_ms)
        with tempfile.TemporaryDirectory() as tmp:
            ids_file = self.learning.ids.save(Path(tmp))
            version, rows, problem = self.registry.publish_model(
                state, meta, self.examples.catalogue, base=(self.version, self.published_state),
                extra_files={IDS_FILE: ids_file} if ids_file else {})
        if problem is not None:
            raise RuntimeError(f"online version {version} has no delta ({problem}): servers will load it in full")
        if self.settings.online.promote and not serve_new_version(self.settings, self.registry, version,
                                                                  only_if_serving=self.version, previous=self.version):
            self.registry.remove(version)  # the pointer moved meanwhile: never undo a nightly promotion
            return None
        result = PublishResult(version, self._since_publish_events, self._since_publish_examples, rows,
                               (time.perf_counter() - started) * 1000)
        self.version, self.published_state = version, state
        self.meta = {**self.meta, ONLINE: meta[ONLINE]}
        self._reset_counters()
        self.prune()
        return result

    def prune(self) -> list[str]:
        """Delete online versions beyond the newest ``online.keep_versions`` (never the served one,
        never a nightly version); returns what was removed."""
        keep = self.settings.online.keep_versions
        online = [v for v in self.registry.versions() if self.registry.meta(v).get("kind") == ONLINE]
        protected = {self.registry.served(), self.version}
        removed = []
        for v in online[:-keep] if len(online) > keep else []:
            if v not in protected:
                self.registry.remove(v)
                removed.append(v)
        return removed
