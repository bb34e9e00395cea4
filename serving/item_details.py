"""Titles and categories of the items in a response, from the catalogue metadata in the online store.

Asked for with ``details=true``: one pipelined read of the few returned items (``item_attributes``,
loaded by ``recsys catalogue load``), cached per item for ``ttl_s`` because a catalogue changes
rarely and a popular item is in most responses. No catalogue loaded: the fields are absent, the
response is otherwise the same.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from features import names
from infra.settings import Settings
from serving.online_features import OnlineFeatureReader

DETAIL_FIELDS = ("title", "category")


class ItemDetails:
    def __init__(self, settings: Settings, ttl_s: float = 60.0, max_cached: int = 200_000) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self._reader: OnlineFeatureReader | None = None
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def _open(self) -> OnlineFeatureReader | None:
        if self._reader is None:
            try:
                self._reader = OnlineFeatureReader(self.settings, [f"{names.ITEM_ATTRIBUTES}:{f}" for f in DETAIL_FIELDS],
                                                   names.ITEM_KEY)
            except KeyError:  # a registry from before the view: `recsys catalogue load` applies it
                return None
        return self._reader

    def of(self, items: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per item: its known detail fields (an item without metadata gets an empty dict)."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        missing = []
        for item in items:
            hit = self._cache.get(item)
            if hit is not None and now - hit[0] < self.ttl_s:
                out[item] = hit[1]
            else:
                missing.append(item)
        reader = self._open() if missing else None
        if reader is not None:
            if len(self._cache) + len(missing) > self.max_cached:
                self._cache.clear()
            for item, row in zip(missing, reader.read(missing)):
                found = {f: v for f, v in zip(DETAIL_FIELDS, row) if v not in (None, "")}
                self._cache[item] = (now, found)
                out[item] = found
        for item in missing:
            out.setdefault(item, {})
        return out
