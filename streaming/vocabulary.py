"""The event vocabulary: which names a log may use, and what each event type means.

The engine's types (:class:`streaming.events.EventType`) are what the features count (``n_view``,
``pop_1h_click``, ...). A log's own names map onto them (``events.aliases``: ``pv`` -> ``view``);
each type has a label rule and a training weight (``events.types``), with the defaults below. The
one table for validation (the aliases), labels (nightly examples, the online learner, the
evaluations) and the DLQ's reasons, so they cannot disagree.

>>> from infra.settings import Settings
>>> vocab = EventVocabulary.from_settings(Settings(events={"aliases": {"pv": "view", "buy": "purchase"},
...                                                        "types": {"purchase": {"weight": 3}}}))
>>> [vocab.label(t, v) for t, v in [("rating", 5.0), ("rating", 2.0), ("view", None), ("purchase", None)]]
[1.0, 0.0, nan, 1.0]
>>> vocab.weight("purchase"), vocab.weight("view")
(3.0, 1.0)
>>> parse_event_types("pv=view, buy=purchase")
{'pv': 'view', 'buy': 'purchase'}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from infra.settings import Settings
from streaming.events import TYPE_NAMES, Aliases

DEFAULT_LABELS: dict[str, str] = {
    "view": "unlabelled", "click": "positive", "add_to_cart": "positive", "purchase": "positive",
    "rating": "rating", "like": "positive", "share": "positive",
}
_FIXED = {"positive": 1.0, "negative": 0.0, "unlabelled": math.nan}


@dataclass(frozen=True)
class EventVocabulary:
    """The aliases, each type's label rule and weight, and the rating threshold."""

    aliases: Aliases = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    weights: Mapping[str, float] = field(default_factory=dict)  # types not listed weigh 1
    rating_threshold: float = 4.0

    @classmethod
    def from_settings(cls, settings: Settings, extra_aliases: Mapping[str, str] | None = None) -> "EventVocabulary":
        """The vocabulary of ``settings.events`` (plus ``extra_aliases``, e.g. ``--event-types``);
        a name that is not an engine type is refused with what would be accepted."""
        events, training = settings.events, settings.training
        aliases = {**events.aliases, **(extra_aliases or {})}
        accepted = ", ".join(TYPE_NAMES)
        for name, target in aliases.items():
            if target not in TYPE_NAMES:
                raise ValueError(f"event alias {name}={target}: {target!r} is not an event type; map it to one of {accepted}")
            if name in TYPE_NAMES and name != target:
                raise ValueError(f"event alias {name}={target}: {name!r} is itself an event type and always means itself")
        labels = dict(DEFAULT_LABELS)
        if training.positive_types is not None:  # the deprecated list: exactly these are positives
            _check_types(training.positive_types, "training.positive_types")
            labels = {t: rule if rule == "rating" else "positive" if t in training.positive_types else "unlabelled"
                      for t, rule in labels.items()}
        _check_types(events.types, "events.types")
        weights = {}
        for name, spec in events.types.items():
            if spec.label is not None:
                labels[name] = spec.label
            if spec.weight is not None and spec.weight != 1.0:
                weights[name] = float(spec.weight)
        return cls({a: t for a, t in aliases.items() if a != t}, labels, weights, training.rating_threshold)

    def engaging(self, only: Sequence[str] | None = None) -> tuple[str, ...]:
        """The types that engage a shown item (attribution): ``only`` when given (checked), else
        every type not labelled negative (a view, a click, a rating of any value)."""
        if only is not None:
            _check_types(only, "attribution.event_types")
            return tuple(only)
        return tuple(t for t, rule in self.labels.items() if rule != "negative")

    def label(self, event_type: str, value: float | None) -> float:
        """1 for a positive, 0 for a negative, NaN for an event without a label (a view)."""
        rule = self.labels[event_type]
        if rule != "rating":
            return _FIXED[rule]
        if value is None or math.isnan(value):
            return math.nan
        return float(value >= self.rating_threshold)

    def label_array(self, event_types: Sequence[str], values: np.ndarray) -> np.ndarray:
        """:meth:`label` for each (type, value) pair, vectorised (the nightly job labels millions).

        >>> EventVocabulary().label_array(["rating", "rating", "view", "click"], np.array([5.0, 1.0, np.nan, np.nan]))
        array([ 1.,  0., nan,  1.])
        """
        types = np.asarray(event_types, dtype=object)
        values = np.asarray(values, dtype=np.float64)
        out = np.full(len(types), np.nan)
        for name, rule in self.labels.items():
            mine = types == name
            if not mine.any():
                continue
            if rule == "rating":
                rated = mine & ~np.isnan(values)
                out[rated] = (values[rated] >= self.rating_threshold).astype(np.float64)
            else:
                out[mine] = _FIXED[rule]
        return out

    def weight(self, event_type: str) -> float:
        return self.weights.get(event_type, 1.0)

    def weight_array(self, event_types: Sequence[str]) -> np.ndarray | None:
        """Each event's training weight, or None when every type weighs 1 (training stays unweighted)."""
        if not self.weights:
            return None
        types = np.asarray(event_types, dtype=object)
        out = np.ones(len(types))
        for name, w in self.weights.items():
            out[types == name] = w
        return out


def parse_event_types(spec: str | None) -> dict[str, str]:
    """``"pv=view,buy=purchase"`` (the ``--event-types`` option) -> aliases."""
    aliases: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"bad event type mapping {part!r}: write yours=engine_type, comma separated "
                             f"(engine types: {', '.join(TYPE_NAMES)})")
        aliases[name.strip()] = target.strip()
    return aliases


def _check_types(names: Sequence[str] | Mapping[str, object], where: str) -> None:
    unknown = [n for n in names if n not in TYPE_NAMES]
    if unknown:
        raise ValueError(f"{where}: {unknown} are not event types; use {', '.join(TYPE_NAMES)} "
                         "(a log's own names go in events.aliases)")
