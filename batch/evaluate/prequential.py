"""Prequential evaluation (`recsys evaluate`): for every event, first recommend, then learn.

A real stream is replayed in event-time order. Everything before ``eval_start`` is history;
from there on, before each positive event every strategy ranks every catalogue item the
user has not interacted with yet, and the event's item is looked up in their top K:

* ``served``: what the API would have returned (``batch.evaluate.served_replay``: the serving code
  itself, with the candidate sources, trending slots and filters, over the daily + online model);
* ``popularity``: the most interacted-with items so far (updated with every event);
* ``static``: a model trained once on the history and never again;
* ``daily``: retrained from scratch on everything so far at every ``retrain_every_days``
  boundary of event time (what the nightly job + its delta give the API);
* ``daily_stale``: the same daily model, but with the feature values frozen at its retrain (what
  a batch-only system without the stream job serves): the gap to ``daily`` is what fresh
  streaming features are worth;
* ``online``: the daily model, plus the streaming trainer's updates (embedding rows at
  ``online.sparse_lr``): a step whenever ``online.batch_size`` examples are waiting, and whatever
  is waiting once ``online.publish_every_s`` of event time has passed (the learner trains what
  it has before each minute-level publish);
* the yardsticks of ``evaluation.baselines`` (``batch.evaluate.baselines``): ``item_knn`` (updated after
  every event), ``ease`` and ``sasrec`` (refit at every retrain boundary), fed every event.

Then the event is fed: features (``features.live``: the stream job's state classes), examples
(``batch.event_examples``: the nightly job's labels and negatives), the online model. The engine's
strategies see the same features and the same candidates, so differences are the models'. The nightly job
is simulated in-process (same features, labels, trainer; no Delta table or Feast join per day),
which is what makes a day-by-day replay of months affordable.

HR@K: the item is in the top K; NDCG@K: 1/log2(rank + 1) when it is. Reported overall and per
day, as JSON, a table and a PNG (``batch.evaluate.prequential_report``), with paired differences between strategies
(same events: mean NDCG@K difference and a bootstrap 95% interval), which say whether a gap is
bigger than what the particular events drawn would produce by chance.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from batch.evaluate.baselines import build_baselines
from batch.event_examples import EventExamples
from batch.evaluate.prequential_report import Report, Scores
from batch.evaluate.served_replay import ServedReplay
from batch.shown_lists import ShownLists
from batch.nightly.training_lists import ranker_list_settings
from models.categories import ItemCategories
from models.cross_features import EXTRA_NAMES, cross_features
from models.similarity import CoOccurrence, DailySimilarity, SimilarityTable
from batch.online.online_learner import WARM_START_FROM
from features.live import LiveFeatures
from features.model_inputs import FeatureSpec
from infra.settings import Settings
from models.config import RankerSettings
from models.id_table import ModelIds, training_ids
from models.ids import bucket_tensor
from models.incremental import IncrementalModel, Row
from models.list_ranker import ListRanker, fit_ranker
from models.ranking import Batch, build_model, dense_optimizer, predict
from models.train import Examples, fit
from streaming.events import DAY_MS, Event
from streaming.vocabulary import EventVocabulary

ENGINE = ("served", "popularity", "static", "daily_stale", "daily", "online")
STRATEGIES = ENGINE  # the engine's own strategies; ``evaluation.baselines`` adds the yardsticks
COMPARED = (("online", "daily"), ("daily", "daily_stale"), ("online", "static"), ("daily", "static"),
            ("online", "popularity"), ("served", "online"), ("served", "popularity"))


class _ExampleLog:
    """Every example made so far (the nightly job's training set at any moment)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.events: list[tuple[str, str, int]] = []  # (user, item, event time) of each labelled event

    def examples(self, group: int) -> Examples:
        users, items, labels, recent, dense, offsets, weights = zip(*self.rows)
        weights = np.asarray(weights, dtype=np.float32)
        return Examples(np.asarray(users, dtype=object), np.asarray(items, dtype=object), list(recent),
                        np.stack(dense).astype(np.float32), np.asarray(labels, dtype=np.float32), group,
                        np.asarray(offsets, dtype=np.float32), None if (weights == 1.0).all() else weights)


class _ListLog:
    """Every candidate-ranker list made so far, with its event time (a retrain reads the recent ones)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep  # lists beyond the newest ``keep`` are never read again
        self.times: list[int] = []
        self.x: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []
        self.weights: list[float] = []

    def add(self, event_time: int, x: np.ndarray, offsets: np.ndarray, weight: float = 1.0) -> None:
        self.times.append(event_time)
        self.x.append(x)
        self.offsets.append(offsets)
        self.weights.append(weight)
        if len(self.times) > self.keep + self.keep // 4:
            del self.times[:-self.keep], self.x[:-self.keep], self.offsets[:-self.keep], self.weights[:-self.keep]

    def recent(self, cfg: RankerSettings) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray | None]:
        """What a retrain now trains on (the newest ``max_lists`` of the last ``train_days``),
        stacked: features, offsets, rows per list, each list's age in days and weight (None: all 1).
        Older lists are dropped: no retrain reads them again."""
        first = max(0, len(self.times) - cfg.max_lists)
        if cfg.train_days:
            first = max(first, int(np.searchsorted(np.asarray(self.times), self.times[-1] - int(cfg.train_days * DAY_MS))))
        del self.times[:first], self.x[:first], self.offsets[:first], self.weights[:first]
        ages = (self.times[-1] - np.asarray(self.times, dtype=np.float64)) / DAY_MS
        weights = np.asarray(self.weights, dtype=np.float32)
        return (np.concatenate(self.x), np.concatenate(self.offsets), len(self.offsets[0]), ages,
                None if (weights == 1.0).all() else weights)


@dataclass(frozen=True)
class Version:
    """A trained model as the registry would hold it: weights, id mapping, similarity table, ranker."""

    model: torch.nn.Module
    ids: ModelIds
    similarity: SimilarityTable | None
    ranker: ListRanker | None = None


def ids_key(ids: ModelIds) -> tuple:
    return ids.key if ids.managed else ("hashed",)


def _rank_of(scores: np.ndarray, target: int) -> int:
    """0-based rank of ``target`` (ties count against it: an untrained model earns nothing)."""
    return int((scores >= scores[target]).sum()) - 1


class Prequential:
    def __init__(self, settings: Settings, spec: FeatureSpec, k: int = 10, retrain_every_days: float = 1.0,
                 progress: bool = True, categories: ItemCategories | None = None) -> None:
        self.settings = settings
        self.vocabulary = EventVocabulary.from_settings(settings)
        self.spec = spec
        self.k = k
        self.every_ms = int(retrain_every_days * DAY_MS)
        self.progress = progress
        self.features = LiveFeatures(settings.features, spec)
        self.log = _ExampleLog()
        cfg = settings.model
        self.similarity = (DailySimilarity(CoOccurrence(cfg.similarity_pair_with), cfg.similarity_top_k, self.every_ms)
                           if cfg.cross_features or settings.ranker.enabled else None)
        # what the served strategy showed: the impressions training.impression_negatives reads
        self.shown = (ShownLists(int(settings.attribution.window_s * 1000),
                                 self.vocabulary.engaging(settings.attribution.event_types))
                      if settings.training.impression_negatives else None)
        self.examples = EventExamples(settings.training, self.vocabulary, self.features, {}, self._new_item, self.similarity,
                                      cross=cfg.cross_features,
                                      ranker_lists=ranker_list_settings(settings) if settings.ranker.enabled else None,
                                      categories=categories, shown=self.shown)
        if settings.ranker.enabled and settings.ranker.category_affinity and categories is None:
            raise ValueError("ranker.category_affinity needs the catalogue's categories: pass --catalogue (e.g. u.item)")
        self.categories = categories
        self.lists = _ListLog(settings.ranker.max_lists)
        self._online: IncrementalModel | None = None
        self.seen: dict[str, set[str]] = {}
        self.popularity: Counter[str] = Counter()
        self.retrains = 0
        self._rows: dict[str, int] = {}  # item -> embedding row
        self.served = ServedReplay(settings, spec, self.features)
        self.baselines = build_baselines(settings.evaluation)
        self.strategies = (*ENGINE, *self.baselines)
        self._index: dict[str, int] = {}  # item -> catalogue index, in order of first appearance (the baselines' ids)
        self.fit_seconds: dict[str, float] = Counter()

    def _nightly(self) -> Version:
        """A model trained from scratch on every example so far, as the nightly job trains it (with
        its id mapping: ``model.ids`` managed tables are filled from the events so far)."""
        cfg, tcfg = self.settings.model, self.settings.training
        started = time.perf_counter()
        ids = training_ids(cfg, self.log.events)
        model = build_model(cfg, self.spec.n_dense)
        fit(model, dense_optimizer(model, cfg), self.log.examples(self.examples.group), cfg, tcfg.epochs, tcfg.batch_size,
            tcfg.seed, progress=False, ids=ids)
        table = self.similarity.freeze() if self.similarity is not None else None
        self.retrains += 1
        self.fit_seconds["daily"] += time.perf_counter() - started
        return Version(model, ids, table, self._fit_ranker())

    def _fit_ranker(self) -> ListRanker | None:
        """The candidate ranker, trained on the lists of the last ``ranker.train_days`` (as the nightly job)."""
        rcfg = self.settings.ranker
        if not rcfg.enabled or not self.lists.times:
            return None
        started = time.perf_counter()
        x, offsets, group, ages, weights = self.lists.recent(rcfg)  # (rows carry every optional input last)
        base = x.shape[1] - len(EXTRA_NAMES)
        wanted = [base + EXTRA_NAMES.index(name) for name in rcfg.extras()]
        ranker = fit_ranker(rcfg, np.concatenate([x[:, :base], x[:, wanted]], axis=1), offsets, group,
                            self.settings.training.seed, ages, weights)
        self.fit_seconds["ranker"] += time.perf_counter() - started
        return ranker

    def _refit_baselines(self, now_ms: int) -> None:
        """What each baseline does at a retrain boundary (EASE and SASRec refit; item-kNN is online)."""
        for name, baseline in self.baselines.items():
            started = time.perf_counter()
            baseline.refit(now_ms)
            self.fit_seconds[name] += time.perf_counter() - started

    def _online_from(self, nightly: Version) -> IncrementalModel:
        o = self.settings.online
        ids = nightly.ids
        self._online = IncrementalModel(nightly.model.state_dict(), self.settings.model, self.spec.n_dense, o.sparse_lr,
                                        o.train_dense, o.batch_size, copy.deepcopy(ids), self.examples.group)
        self._taken_rows = set() if ids.managed else set(self._item_rows(self.examples.items).tolist())
        return self._online

    def _new_item(self, item_id: str) -> None:
        """As the streaming trainer does: a new item's row starts at the mean of popular items' rows."""
        if self._online is not None:
            self._online.start_item(item_id, self.examples.items[:WARM_START_FROM], self._taken_rows)

    def _feed(self, event: Event, index: int, online: IncrementalModel | None) -> None:
        if online is not None:  # as the learner does: managed ids count the event first
            online.admit(event.user_id, event.item_id, event.event_time, self.examples.items[:WARM_START_FROM])
        if self.shown is not None:
            self.shown.event(event.user_id, event.item_id, event.event_time, event.event_type.value)
        listed = self.examples.ranker_list(event, (index,))
        if listed is not None:
            self.lists.add(event.event_time, *listed)
        rows = self.examples.make(event, (index,))
        self.log.rows.extend(rows)
        labelled = not math.isnan(self.vocabulary.label(event.event_type.value, event.value))
        if labelled:
            self.log.events.append((event.user_id, event.item_id, event.event_time))
        if online is not None:
            online.add(rows)
        self.features.add(event.event_id, event.user_id, event.item_id, event.event_type.value, event.value,
                          event.event_time)
        self.seen.setdefault(event.user_id, set()).add(event.item_id)
        index = self._index.setdefault(event.item_id, len(self._index))
        for baseline in self.baselines.values():
            baseline.learn(event.user_id, index, event.event_time)
        if labelled:
            self.popularity[event.item_id] += 1

    def _batch(self, user: str, items: list[str], dense: np.ndarray, recent: list[str], version: Version) -> Batch:
        """One user against many items (hashed item rows are cached: the catalogue is re-ranked per event)."""
        ids = version.ids
        if version.similarity is not None and self.settings.model.cross_features:
            dense = np.hstack([dense, cross_features(version.similarity, recent, items)])
        item_rows = ids.items.rows(items) if ids.managed else self._item_rows(items)
        return Batch.one_user(ids.users.rows([user]), item_rows, ids.items.rows(recent), torch.from_numpy(dense))

    def _item_rows(self, items: list[str]) -> torch.Tensor:
        missing = [i for i in items if i not in self._rows]
        if missing:
            self._rows.update(zip(missing, bucket_tensor(missing, self.settings.model.item_buckets).tolist()))
        return torch.tensor([self._rows[i] for i in items], dtype=torch.long)

    def run(self, events: Sequence[Event], eval_start_ms: int) -> Report:
        events = sorted(events, key=lambda e: (e.event_time, e.event_id))
        history = [e for e in events if e.event_time < eval_start_ms]
        stream = [e for e in events if e.event_time >= eval_start_ms]
        if not history or not stream:
            raise ValueError(f"nothing to compare: {len(history)} events before the evaluation start and {len(stream)} "
                             "after it; pick --eval-days smaller than the file's time span")
        for i, e in enumerate(tqdm(history, desc="history", unit="ev", disable=None if self.progress else True)):
            self._feed(e, i, None)
        static = daily = self._nightly()
        self._refit_baselines(eval_start_ms)
        online = self._online_from(daily)
        self.served.publish(online.model, online.ids, self.examples.catalogue, daily.similarity, daily.ranker,
                            self.categories)
        self.stale = copy.deepcopy(self.features)
        next_retrain = eval_start_ms + self.every_ms
        publish_ms, last_publish = int(self.settings.online.publish_every_s * 1000), eval_start_ms
        scores = Scores(self.k, self.strategies)
        for j, e in enumerate(tqdm(stream, desc="prequential", unit="ev", disable=None if self.progress else True)):
            if e.event_time >= next_retrain:
                online.flush()
                daily = self._nightly()
                self._refit_baselines(e.event_time)
                online = self._online_from(daily)
                self.served.publish(online.model, online.ids, self.examples.catalogue, daily.similarity, daily.ranker,
                                    self.categories)
                self.stale = copy.deepcopy(self.features)
                while next_retrain <= e.event_time:
                    next_retrain += self.every_ms
            if online.pending and e.event_time - last_publish >= publish_ms:
                online.flush()  # the learner publishes what it has every online.publish_every_s of event time
                online.expire(e.event_time)  # ... and expires managed ids at each publish
                self.served.publish(online.model, online.ids, self.examples.catalogue, daily.similarity, daily.ranker,
                                    self.categories)
                last_publish = e.event_time
            label = self.vocabulary.label(e.event_type.value, e.value)
            if label == 1.0 and e.item_id in self.examples.catalogue and e.item_id not in self.seen.get(e.user_id, ()):
                ranks = self._ranks(e, {"static": static, "daily": daily,
                                        "online": Version(online.model, online.ids, daily.similarity)})
                scores.add(e.event_time, ranks)
            self._feed(e, len(history) + j, online)
        pairs = [*COMPARED, *((a, b) for b in self.baselines for a in ("served", "daily", "online"))]
        return Report.build(scores, pairs, self.settings.evaluation.bootstrap_resamples, eval_start_ms=eval_start_ms,
                            events=len(stream), history_events=len(history), retrains=self.retrains,
                            fit_seconds=dict(self.fit_seconds))

    def _ranks(self, e: Event, models: dict[str, Version]) -> dict[str, int | None]:
        """Every strategy's 0-based rank of the event's item among the catalogue items the user has
        not interacted with yet."""
        seen = self.seen.get(e.user_id, set())
        items = [i for i in self.examples.items if i not in seen]
        target = items.index(e.item_id)
        dense, recent = self.features.rows(e.user_id, items)
        pop = np.array([self.popularity[i] for i in items], dtype=np.float64)
        ranks = {"popularity": _rank_of(pop, target)}
        served = [i.item_id for i in self.served.recommend(e.user_id, self.k, exclude=seen).items]
        ranks["served"] = served.index(e.item_id) if e.item_id in served else None
        if self.shown is not None:  # the list the user was shown just before the event (an impression)
            self.shown.shown(e.user_id, e.event_time - 1, served)
        batches: dict[tuple, Batch] = {}  # models sharing a mapping and a table share the batch
        for name, v in models.items():
            key = (ids_key(v.ids), id(v.similarity))
            if key not in batches:
                batches[key] = self._batch(e.user_id, items, dense, recent, v)
            ranks[name] = _rank_of(predict(v.model, batches[key]).numpy(), target)
        daily = models["daily"]
        stale_dense, stale_recent = self.stale.rows(e.user_id, items)
        ranks["daily_stale"] = _rank_of(predict(daily.model, self._batch(e.user_id, items, stale_dense, stale_recent,
                                                                         daily)).numpy(), target)
        if self.baselines:
            indices = np.fromiter((self._index[i] for i in items), dtype=np.int64, count=len(items))
            for name, baseline in self.baselines.items():
                ranks[name] = _rank_of(baseline.scores(e.user_id, indices), target)
        return ranks
