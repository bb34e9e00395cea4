"""The feature views: one table (``VIEWS``) of names, entities, fields and descriptions.

The Feast definitions (features.definitions), the computation (features.compute), the stream
job and the backfill all take the views from here, so a feature cannot exist in one and not the
other.

>>> from infra.settings import FeatureSettings
>>> popularity_fields(FeatureSettings())[:3]
['pop_1h', 'pop_1h_view', 'pop_1h_click']
>>> views_of("user")
('user_stats', 'user_recent')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from infra.settings import FeatureSettings
from streaming.events import EventType

USER_STATS = "user_stats"
ITEM_STATS = "item_stats"
USER_RECENT = "user_recent"
ITEM_POPULARITY = "item_popularity"
ITEM_COVISIT = "item_covisit"
ITEM_ATTRIBUTES = "item_attributes"

USER_KEY = "user_id"
ITEM_KEY = "item_id"

EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)


def stats_fields() -> list[str]:
    """Aggregates shared by users and items: counts per type, rating average, last seen."""
    return ["n_events", *(f"n_{t}" for t in EVENT_TYPES), "rating_count", "avg_rating", "last_seen_ms"]


def recent_fields() -> list[str]:
    return ["recent_items", "recent_types", "recent_times_ms"]


def popularity_fields(cfg: FeatureSettings) -> list[str]:
    fields: list[str] = []
    for w in cfg.windows:
        fields.append(f"pop_{w.name}")
        fields.extend(f"pop_{w.name}_{t}" for t in EVENT_TYPES)
    return [*fields, "trending", "pop_as_of_ms"]


def covisit_fields() -> list[str]:
    return ["covisit_items", "covisit_counts"]


def attribute_fields() -> list[str]:
    """Catalogue metadata: the title, the categories ('|' between several), every other column as JSON."""
    return ["title", "category", "attributes"]


@dataclass(frozen=True)
class View:
    name: str
    entity: str  # "user" (keyed by USER_KEY) or "item" (ITEM_KEY)
    fields: Callable[[FeatureSettings], list[str]]
    about: Callable[[FeatureSettings], str]


VIEWS: tuple[View, ...] = (
    View(USER_STATS, "user", lambda cfg: stats_fields(), lambda cfg: "per-user counts by event type, rating average, last seen"),
    View(USER_RECENT, "user", lambda cfg: recent_fields(), lambda cfg: f"the user's last {cfg.recent_items} events, newest first"),
    View(ITEM_STATS, "item", lambda cfg: stats_fields(), lambda cfg: "per-item counts by event type, rating average, last seen"),
    View(ITEM_POPULARITY, "item", popularity_fields, lambda cfg: "event counts in sliding event-time windows, trending score"),
    View(ITEM_COVISIT, "item", lambda cfg: covisit_fields(),
         lambda cfg: f"top {cfg.covisit_top_k} items seen by the same users within {cfg.covisit_window_s}s"),
)


# Loaded from a catalogue file (batch.catalogue), not computed from events: strings, so never a
# model input (features.model_inputs takes numbers only); read by the API for item details.
LOADED_VIEWS: tuple[View, ...] = (
    View(ITEM_ATTRIBUTES, "item", lambda cfg: attribute_fields(),
         lambda cfg: "catalogue metadata loaded from a file (`recsys catalogue load`): title, category, other columns"),
)


def views_of(entity: str) -> tuple[str, ...]:
    """The names of an entity's computed views, in table order."""
    return tuple(v.name for v in VIEWS if v.entity == entity)
