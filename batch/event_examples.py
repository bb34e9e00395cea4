"""Training examples from single events, as the nightly job makes them from the events table.

Same labels (the event vocabulary's, ``streaming.vocabulary``, as the nightly job applies them), features as of
just before the event (``features.live``), negatives drawn with a seed derived from the event's
position so a replay draws the same ones. Used by the streaming trainer and the prequential
evaluation.

``training.objective = "pointwise"`` (the default): a labelled row per event plus uniform
negatives for a positive. ``listwise``: each positive event makes one list
(``batch.nightly.training_lists``: the item taken, hard negatives from the user's item-kNN list, uniform
draws); events with a negative label make none. With ``model.cross_features``
the rows carry the neighbourhood features (``models.cross_features``) from ``similarity``: a
version's fixed table (the streaming trainer), or a
:class:`~models.similarity.DailySimilarity` that is updated with every event and read as the
table a retrain at the last day boundary would have frozen (the replay): never the future, and
what the API would read.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from features.live import LiveFeatures
from infra.settings import TrainingSettings
from batch.nightly.training_lists import Popular, list_items, list_size
from batch.shown_lists import ShownLists
from models.categories import ItemCategories
from models.cross_features import all_extras, cross_features
from models.incremental import Row
from models.list_ranker import ranker_inputs
from models.similarity import DailySimilarity, Neighbours
from streaming.events import Event
from streaming.vocabulary import EventVocabulary


class EventExamples:
    """Makes one event's examples and keeps the catalogue (item -> labelled events) current."""

    def __init__(self, cfg: TrainingSettings, vocabulary: EventVocabulary, features: LiveFeatures, catalogue: dict[str, int],
                 on_new_item: Callable[[str], None] = lambda item: None,
                 similarity: "Neighbours | DailySimilarity | None" = None, cross: bool = True,
                 ranker_lists: TrainingSettings | None = None, categories: ItemCategories | None = None,
                 shown: "ShownLists | None" = None) -> None:
        self.cfg = cfg
        self.vocabulary = vocabulary
        self.features = features
        self.catalogue = catalogue
        self.items = list(catalogue)  # most trained-on first, then in order of arrival
        self.on_new_item = on_new_item
        self.similarity = similarity  # None: no cross features, no ranker lists
        self.cross = cross and similarity is not None  # the model's rows carry the cross features
        self.listwise = cfg.objective == "listwise"
        self.ranker_lists = ranker_lists if similarity is not None else None  # how the ranker's lists are made
        self.categories = categories  # the catalogue's, for the ranker lists' category affinity
        self.shown = shown  # lists served so far: training.impression_negatives come from them (pointwise)
        # lists only: what each user touched since this object started (negatives avoid it), popular items
        self.seen: dict[str, set[str]] = {}
        self.popular = Popular(cfg.popular_pool)
        if self.listwise:
            self.popular.counts.update(catalogue)
        self.ranker_popular = Popular(ranker_lists.popular_pool if ranker_lists else 0)
        if self.ranker_lists:
            self.ranker_popular.counts.update(catalogue)

    @property
    def group(self) -> int:
        """Rows per list (1: independent rows)."""
        return list_size(self.cfg) if self.listwise else 1

    def _table(self, event: Event) -> Neighbours | None:
        return self.similarity.table(event.event_time) if isinstance(self.similarity, DailySimilarity) else self.similarity

    def ranker_list(self, event: Event, seed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float] | None:
        """A positive event's list for the candidate ranker (``models.list_ranker``): every row's
        entity and cross features (the item taken first) with every optional input
        (``models.cross_features.EXTRA_NAMES``), its logit offset, and the list's weight;
        None for any other event. Call before :meth:`make`, which folds the event in."""
        if self.ranker_lists is None or self.vocabulary.label(event.event_type.value, event.value) != 1.0:
            return None
        sim = self._table(event)
        _, recent = self.features.user(event.user_id)
        items, offsets = list_items(self.ranker_lists, event.item_id, recent, self.seen.get(event.user_id, set()), sim,
                                    self.items, self.catalogue, self.ranker_popular.top,
                                    np.random.default_rng((self.cfg.seed, 1, *seed)))
        if not items:
            return None
        dense, recent = self.features.rows(event.user_id, items)
        x = ranker_inputs(dense, cross=cross_features(sim, recent, items),
                          extras=[all_extras(sim, self.categories, recent, items, event.event_time)])
        return x, np.asarray(offsets, dtype=np.float32), self.vocabulary.weight(event.event_type.value)

    def make(self, event: Event, seed: tuple[int, ...]) -> list[Row]:
        """The event's rows (none for a view); call before the event is folded into the features."""
        label = self.vocabulary.label(event.event_type.value, event.value)
        rows: list[Row] = []
        sim = self._table(event)
        if not math.isnan(label):
            items, offsets = self._items(event, label, seed, sim)
            if items:
                dense, recent = self.features.rows(event.user_id, items)
                if self.cross:
                    dense = np.hstack([dense, cross_features(sim, recent, items)])
                labels = [label] + [0.0] * (len(items) - 1)
                w = self.vocabulary.weight(event.event_type.value)  # the event's row, and its whole list (listwise)
                weights = [w] * len(items) if self.listwise else [w] + [1.0] * (len(items) - 1)
                rows = [(event.user_id, item, labels[i], recent, dense[i], offsets[i], weights[i]) for i, item in enumerate(items)]
            if event.item_id not in self.catalogue:
                self.items.append(event.item_id)
                self.on_new_item(event.item_id)
            self.catalogue[event.item_id] = self.catalogue.get(event.item_id, 0) + 1  # labelled events, as nightly
            if self.listwise:
                self.popular.add(event.item_id)
            if self.ranker_lists:
                self.ranker_popular.add(event.item_id)
        if self.listwise or self.ranker_lists:
            self.seen.setdefault(event.user_id, set()).add(event.item_id)
        if isinstance(self.similarity, DailySimilarity):
            self.similarity.learn(event.user_id, event.item_id, event.event_time)
        return rows

    def _items(self, event: Event, label: float, seed: tuple[int, ...], sim: Neighbours | None) -> tuple[list[str], list[float]]:
        """The event's item, then its negatives, with each row's logit offset."""
        rng = np.random.default_rng((self.cfg.seed, *seed))
        _, recent = self.features.user(event.user_id)
        if self.listwise:
            if label != 1.0:
                return [], []
            return list_items(self.cfg, event.item_id, recent, self.seen.get(event.user_id, set()), sim, self.items,
                              self.catalogue, self.popular.top, rng)
        items = [event.item_id]
        k = self.cfg.negatives_per_positive
        if label == 1.0 and k and self.items:
            avoid = set(recent) | {event.item_id}
            draws = rng.integers(0, len(self.items), size=k * 3)
            items += [c for c in dict.fromkeys(self.items[d] for d in draws) if c not in avoid][:k]
        m = self.cfg.impression_negatives
        if label == 1.0 and m and self.shown is not None:
            avoid = set(recent) | set(items) | self.seen.get(event.user_id, set())
            items += [c for c in self.shown.not_engaged(event.user_id, event.event_time, m + len(avoid)) if c not in avoid][:m]
        return items, [0.0] * len(items)
