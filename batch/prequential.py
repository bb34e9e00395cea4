"""Prequential evaluation (`recsys evaluate`): for every event, first recommend, then learn.

A real stream is replayed in event-time order. Everything before ``eval_start`` is history;
from there on, before each positive event the four strategies rank every catalogue item the
user has not interacted with yet, and the event's item is looked up in their top K:

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
  it has before each minute-level publish).

Then the event is fed: features (``features.live``: the stream job's state classes), examples
(``batch.event_examples``: the nightly job's labels and negatives), the online model. All four
see the same features and the same candidates, so differences are the models'. The nightly job
is simulated in-process (same features, labels, trainer; no Delta table or Feast join per day),
which is what makes a day-by-day replay of months affordable.

HR@K: the item is in the top K; NDCG@K: 1/log2(rank + 1) when it is. Reported overall and per
day, as JSON and a PNG (metric vs time per strategy), with paired differences between strategies
(same events: mean NDCG@K difference and a bootstrap 95% interval), which say whether a gap is
bigger than what the particular events drawn would produce by chance.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from batch.event_examples import EventExamples
from batch.training_data import label_of
from batch.online_learner import WARM_START_FROM
from features.live import LiveFeatures
from features.model_inputs import FeatureSpec
from infra.settings import Settings
from models.id_table import ModelIds, training_ids
from models.ids import bucket_tensor
from models.incremental import IncrementalModel, Row
from models.ranking import Batch, build_model, dense_optimizer, predict
from models.train import Examples, fit
from streaming.events import Event

DAY_MS = 86_400_000
STRATEGIES = ("popularity", "static", "daily_stale", "daily", "online")
COMPARED = (("online", "daily"), ("daily", "daily_stale"), ("online", "static"), ("daily", "static"),
            ("online", "popularity"))


def ndcg_gain(rank: int | None, k: int) -> float:
    """1/log2(rank + 2) for a 0-based rank inside the top k, else 0."""
    return 1 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


@dataclass
class Tally:
    hits: float = 0.0
    ndcg: float = 0.0
    n: int = 0

    def add(self, rank: int | None, k: int) -> float:
        """Count one scored event; returns its NDCG@k gain."""
        self.n += 1
        gain = ndcg_gain(rank, k)
        self.hits += gain > 0
        self.ndcg += gain
        return gain

    def metrics(self) -> dict[str, float]:
        return {"hr": self.hits / self.n if self.n else math.nan, "ndcg": self.ndcg / self.n if self.n else math.nan,
                "events": self.n}


@dataclass
class Report:
    k: int
    eval_start_ms: int
    events: int
    history_events: int
    retrains: int
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    per_day: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # day -> strategy -> metrics
    differences: dict[str, dict[str, float]] = field(default_factory=dict)  # "a_vs_b" -> paired NDCG@K difference
    scenario: dict[str, float] = field(default_factory=dict)  # how the replay was altered, if at all (catalogue churn)

    def ratio(self, metric: str, a: str, b: str) -> float:
        top, bottom = self.overall[a][metric], self.overall[b][metric]
        return top / bottom if bottom else math.nan

    def to_dict(self) -> dict:
        return {"k": self.k, "eval_start_ms": self.eval_start_ms, "events": self.events,
                "history_events": self.history_events, "retrains": self.retrains, "overall": self.overall,
                "per_day": self.per_day, "ndcg_differences": self.differences, "scenario": self.scenario,
                "ratios": {f"{m}_{a}_vs_{b}": self.ratio(m, a, b) for m in ("hr", "ndcg")
                           for a, b in (*COMPARED, ("daily", "popularity"))}}


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over the same events, with a percentile-bootstrap 95% interval, and the
    share of events where either is ahead.

    >>> d = paired_difference([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0])
    >>> d["mean"], d["a_ahead"], d["b_ahead"]
    (0.5, 0.5, 0.0)
    >>> 0.0 <= d["low"] <= d["mean"] <= d["high"] <= 1.0
    True
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "a_ahead": math.nan, "b_ahead": math.nan}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "a_ahead": float((diff > 0).mean()), "b_ahead": float((diff < 0).mean())}


class _ExampleLog:
    """Every example made so far (the nightly job's training set at any moment)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.events: list[tuple[str, str, int]] = []  # (user, item, event time) of each labelled event

    def examples(self) -> Examples:
        users, items, labels, recent, dense = zip(*self.rows)
        return Examples(np.asarray(users, dtype=object), np.asarray(items, dtype=object), list(recent),
                        np.stack(dense).astype(np.float32), np.asarray(labels, dtype=np.float32))


def _rank_of(scores: np.ndarray, target: int) -> int:
    """0-based rank of ``target`` (ties count against it: an untrained model earns nothing)."""
    return int((scores >= scores[target]).sum()) - 1


class Prequential:
    def __init__(self, settings: Settings, spec: FeatureSpec, k: int = 10, retrain_every_days: float = 1.0,
                 progress: bool = True) -> None:
        self.settings = settings
        self.spec = spec
        self.k = k
        self.every_ms = int(retrain_every_days * DAY_MS)
        self.progress = progress
        self.features = LiveFeatures(settings.features, spec)
        self.log = _ExampleLog()
        self.examples = EventExamples(settings.training, self.features, {}, self._new_item)
        self._online: IncrementalModel | None = None
        self.seen: dict[str, set[str]] = {}
        self.popularity: Counter[str] = Counter()
        self.retrains = 0
        self._rows: dict[str, int] = {}  # item -> embedding row
        self.gains: dict[str, list[float]] = {s: [] for s in STRATEGIES}  # NDCG@K per scored event

    def _nightly(self) -> tuple[torch.nn.Module, ModelIds]:
        """A model trained from scratch on every example so far, as the nightly job trains it (with
        its id mapping: ``model.ids`` managed tables are filled from the events so far)."""
        cfg, tcfg = self.settings.model, self.settings.training
        ids = training_ids(cfg, self.log.events)
        model = build_model(cfg, self.spec.n_dense)
        fit(model, dense_optimizer(model, cfg), self.log.examples(), cfg, tcfg.epochs, tcfg.batch_size, tcfg.seed,
            progress=False, ids=ids)
        self.retrains += 1
        return model, ids

    def _online_from(self, nightly: tuple[torch.nn.Module, ModelIds]) -> IncrementalModel:
        o = self.settings.online
        model, ids = nightly
        self._online = IncrementalModel(model.state_dict(), self.settings.model, self.spec.n_dense, o.sparse_lr,
                                        o.train_dense, o.batch_size, copy.deepcopy(ids))
        self._taken_rows = set() if ids.managed else set(self._item_rows(self.examples.items).tolist())
        return self._online

    def _new_item(self, item_id: str) -> None:
        """As the streaming trainer does: a new item's row starts at the mean of popular items' rows."""
        if self._online is not None:
            self._online.start_item(item_id, self.examples.items[:WARM_START_FROM], self._taken_rows)

    def _feed(self, event: Event, index: int, online: IncrementalModel | None) -> None:
        if online is not None:  # as the learner does: managed ids count the event first
            online.admit(event.user_id, event.item_id, event.event_time, self.examples.items[:WARM_START_FROM])
        rows = self.examples.make(event, (index,))
        self.log.rows.extend(rows)
        if rows:
            self.log.events.append((event.user_id, event.item_id, event.event_time))
        if online is not None:
            online.add(rows)
        self.features.add(event.event_id, event.user_id, event.item_id, event.event_type.value, event.value,
                          event.event_time)
        self.seen.setdefault(event.user_id, set()).add(event.item_id)
        if rows:
            self.popularity[event.item_id] += 1

    def _batch(self, user: str, items: list[str], dense: np.ndarray, recent: list[str], ids: ModelIds) -> Batch:
        """One user against many items (hashed item rows are cached: the catalogue is re-ranked per event)."""
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
        online = self._online_from(daily)
        self.stale = copy.deepcopy(self.features)
        next_retrain = eval_start_ms + self.every_ms
        publish_ms, last_publish = int(self.settings.online.publish_every_s * 1000), eval_start_ms
        tallies = {s: Tally() for s in STRATEGIES}
        days: dict[str, dict[str, Tally]] = {}
        for j, e in enumerate(tqdm(stream, desc="prequential", unit="ev", disable=None if self.progress else True)):
            if e.event_time >= next_retrain:
                online.flush()
                daily = self._nightly()
                online = self._online_from(daily)
                self.stale = copy.deepcopy(self.features)
                while next_retrain <= e.event_time:
                    next_retrain += self.every_ms
            if online.pending and e.event_time - last_publish >= publish_ms:
                online.flush()  # the learner publishes what it has every online.publish_every_s of event time
                online.expire(e.event_time)  # ... and expires managed ids at each publish
                last_publish = e.event_time
            label = label_of(self.settings.training, e.event_type.value, e.value)
            if label == 1.0 and e.item_id in self.examples.catalogue and e.item_id not in self.seen.get(e.user_id, ()):
                self._evaluate(e, {"static": static, "daily": daily, "online": (online.model, online.ids)},
                               tallies, days)
            self._feed(e, len(history) + j, online)
        overall = {s: t.metrics() for s, t in tallies.items()}
        per_day = {d: {s: t.metrics() for s, t in by.items()} for d, by in sorted(days.items())}
        differences = {f"{a}_vs_{b}": paired_difference(self.gains[a], self.gains[b]) for a, b in COMPARED}
        return Report(self.k, eval_start_ms, len(stream), len(history), self.retrains, overall, per_day, differences)

    def _evaluate(self, e: Event, models: dict[str, tuple[torch.nn.Module, ModelIds]], tallies: dict[str, Tally],
                  days: dict[str, dict[str, Tally]]) -> None:
        seen = self.seen.get(e.user_id, set())
        items = [i for i in self.examples.items if i not in seen]
        target = items.index(e.item_id)
        dense, recent = self.features.rows(e.user_id, items)
        day = _day(e.event_time)
        by_day = days.setdefault(day, {s: Tally() for s in STRATEGIES})
        pop = np.array([self.popularity[i] for i in items], dtype=np.float64)
        ranks = {"popularity": _rank_of(pop, target)}
        batches: dict[tuple, Batch] = {}  # models sharing a mapping share the batch (hashed: all of them)
        for name, (model, ids) in models.items():
            key = ids.key if ids.managed else ("hashed",)
            if key not in batches:
                batches[key] = self._batch(e.user_id, items, dense, recent, ids)
            ranks[name] = _rank_of(predict(model, batches[key]).numpy(), target)
        model, ids = models["daily"]
        stale_dense, stale_recent = self.stale.rows(e.user_id, items)
        ranks["daily_stale"] = _rank_of(predict(model, self._batch(e.user_id, items, stale_dense, stale_recent, ids)).numpy(),
                                        target)
        for name, rank in ranks.items():
            self.gains[name].append(tallies[name].add(rank, self.k))
            by_day[name].add(rank, self.k)


def _day(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.png (HR@K and NDCG@K per day, one line per strategy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "prequential.json", out_dir / "prequential.png"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, default=float))
    days = list(report.per_day)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("hr", "ndcg")):
        for s in STRATEGIES:
            ax.plot(range(len(days)), [report.per_day[d][s][metric] for d in days], marker="o", ms=3,
                    label=f"{s} ({report.overall[s][metric]:.3f})")
        ax.set_xticks(range(len(days)), days, rotation=60, fontsize=7)
        ax.set(title=f"{metric.upper()}@{report.k} per day (prequential)", ylabel=f"{metric.upper()}@{report.k}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
