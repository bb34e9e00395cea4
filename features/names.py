"""Feature view and feature names, derived once from the settings.

The Feast definitions (features.definitions) and the computation (features.compute) both take
their names from here, so a feature cannot exist in one and not the other.

>>> from infra.settings import FeatureSettings
>>> popularity_fields(FeatureSettings())[:3]
['pop_1h', 'pop_1h_view', 'pop_1h_click']
"""

from __future__ import annotations

from infra.settings import FeatureSettings
from streaming.events import EventType

USER_STATS = "user_stats"
ITEM_STATS = "item_stats"
USER_RECENT = "user_recent"
ITEM_POPULARITY = "item_popularity"
ITEM_COVISIT = "item_covisit"

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
