"""Training examples from single events, as the nightly job makes them from the events table.

Same labels (``batch.training_data.label_of``, the rule the nightly job applies), features as of
just before the event (``features.live``), ``training.negatives_per_positive`` uniform negatives
from the catalogue, drawn with a seed derived from the event's position so a replay draws the
same ones. Used by the streaming trainer and the prequential evaluation.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from batch.training_data import label_of
from features.live import LiveFeatures
from infra.settings import TrainingSettings
from models.incremental import Row
from streaming.events import Event


class EventExamples:
    """Makes one event's examples and keeps the catalogue (item -> labelled events) current."""

    def __init__(self, cfg: TrainingSettings, features: LiveFeatures, catalogue: dict[str, int],
                 on_new_item: Callable[[str], None] = lambda item: None) -> None:
        self.cfg = cfg
        self.features = features
        self.catalogue = catalogue
        self.items = list(catalogue)  # most trained-on first, then in order of arrival
        self.on_new_item = on_new_item

    def make(self, event: Event, seed: tuple[int, ...]) -> list[Row]:
        """The event's rows (none for a view); call before the event is folded into the features."""
        label = label_of(self.cfg, event.event_type.value, event.value)
        if math.isnan(label):
            return []
        items = [event.item_id]
        k = self.cfg.negatives_per_positive
        if label == 1.0 and k and self.items:
            rng = np.random.default_rng((self.cfg.seed, *seed))
            _, recent = self.features.user(event.user_id)
            avoid = set(recent) | {event.item_id}
            draws = rng.integers(0, len(self.items), size=k * 3)
            items += [c for c in dict.fromkeys(self.items[d] for d in draws) if c not in avoid][:k]
        dense, recent = self.features.rows(event.user_id, items)
        rows = [(event.user_id, item, label if i == 0 else 0.0, recent, dense[i]) for i, item in enumerate(items)]
        if event.item_id not in self.catalogue:
            self.items.append(event.item_id)
            self.on_new_item(event.item_id)
        self.catalogue[event.item_id] = self.catalogue.get(event.item_id, 0) + 1  # labelled events, as nightly
        return rows
