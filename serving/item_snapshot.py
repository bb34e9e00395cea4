"""Item features for the whole catalogue, re-read in the background every ``item_refresh_s``.

Ranking needs the dense item features of a few hundred candidates per request, and the trending
source needs every item's windowed popularity. Both change per event, but nobody needs them
fresher than about a second, so one background pass reads the catalogue from Redis (through the
same Feast-layout reader) and publishes an immutable snapshot; requests only index into it.
User features are the opposite (one row, must reflect the user's last click): they are read on
every request.

Windowed counts are written when an item gets an event, so an item nobody touched for a day
still carries yesterday's 1-hour count. For choosing trending candidates a window counts only
if the item was updated within it, measured on the stream's event-time clock (the newest
``pop_as_of_ms`` in the catalogue). The model's inputs stay exactly what Feast returns, as in
training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from features import names
from features.model_inputs import dense_transform
from infra.periodic import Periodic
from infra.settings import Settings
from serving.online_features import OnlineFeatureReader, decode_value, numeric
from serving.served_model import ServedModel

CHUNK = 2000
_decode_cached = lru_cache(maxsize=65536)(decode_value)  # item features are scalars that repeat (small counts)


@dataclass(frozen=True, eq=False)
class ItemSnapshot:
    version: str  # the model whose catalogue and feature spec it follows
    items: np.ndarray
    index: dict[str, int]
    dense: np.ndarray  # (n, len(spec.item_refs)), transformed like the model's inputs
    trending: list[str]  # catalogue items with recent activity, most active first
    event_time_ms: int  # the stream's event-time clock: newest popularity update seen
    read_at: float  # wall clock of the read
    read_ms: float
    refs: tuple[str, ...] = ()
    values: np.ndarray | None = None  # raw values per item and ref (NaN = missing)
    stamps: list | None = None  # per item: the views' raw write timestamps when read
    changed: int = 0  # items re-read in this pass

    def dense_for(self, items: list[str]) -> tuple[np.ndarray, list[int]]:
        """Rows for ``items``; the positions of items the snapshot doesn't have are returned too."""
        idx = [self.index.get(i, -1) for i in items]
        missing = [p for p, i in enumerate(idx) if i < 0]
        out = self.dense[np.asarray([max(i, 0) for i in idx], dtype=np.int64)] if items else self.dense[:0]
        return out, missing


class ItemSnapshotter:
    """Reads the catalogue's item features; keeps the latest snapshot for the served model."""

    def __init__(self, settings: Settings, model: Callable[[], ServedModel | None], interval_s: float,
                 readers: Callable[[tuple[str, ...], str], OnlineFeatureReader] | None = None,
                 also: Callable[[], Iterable[ServedModel]] = tuple) -> None:
        """``readers(refs, join_key)``: the online store's readers by default (a replay passes its own);
        ``also``: the other models served now (an experiment's arms), refreshed beside ``model``'s."""
        self.settings = settings
        self.also = also
        self._make_reader = readers or (lambda refs, key: OnlineFeatureReader(settings, refs, key))
        self.model = model
        self.interval_s = interval_s
        self._by_version: dict[str, ItemSnapshot] = {}  # the served model's, and the one before
        self.errors = 0
        self.last_error = ""
        self._readers: dict[tuple[str, ...], OnlineFeatureReader] = {}
        self._loop = Periodic("item-snapshot", self.refresh_all, interval_s, self._report)
        windows = sorted(settings.features.windows, key=lambda w: w.size_s)
        self._windows = [(f"{names.ITEM_POPULARITY}:pop_{w.name}", w.size_s * 1000) for w in windows]
        self._as_of = f"{names.ITEM_POPULARITY}:pop_as_of_ms"

    def reader(self, refs: tuple[str, ...]) -> OnlineFeatureReader:
        if refs not in self._readers:
            self._readers[refs] = self._make_reader(refs, names.ITEM_KEY)
        return self._readers[refs]

    def get(self, version: str) -> ItemSnapshot | None:
        return self._by_version.get(version)

    @property
    def current(self) -> ItemSnapshot | None:
        served = self.model()
        return self._by_version.get(served.version) if served else None

    def refresh_all(self) -> None:
        """The served model's snapshot and each experiment arm's."""
        self.refresh()
        for other in list(self.also()):
            self.refresh(other)

    def refresh(self, served: ServedModel | None = None) -> ItemSnapshot | None:
        """Read a model's catalogue now: the served one, or a new one before it is swapped in."""
        served = served or self.model()
        if served is None:
            return None
        started = time.perf_counter()
        dense_refs = tuple(served.spec.item_refs)
        refs = self._refs(served)
        reader = self.reader(refs)
        items = served.catalogue.tolist()
        stamps: list = []
        for lo in range(0, len(items), CHUNK):  # timestamps first: a write after them is seen next pass
            stamps.extend(reader.read_timestamps(items[lo:lo + CHUNK]))
        prev = self._by_version.get(served.version) or self._same_catalogue(served, refs)
        if prev is not None and prev.refs == refs and prev.values is not None:
            changed = [i for i, (now, before) in enumerate(zip(stamps, prev.stamps)) if now != before]
            values = prev.values.copy() if changed else prev.values
        else:
            changed = list(range(len(items)))
            values = np.full((len(items), len(refs)), np.nan)
        for lo in range(0, len(changed), CHUNK):
            part = changed[lo:lo + CHUNK]
            rows = reader.read([items[i] for i in part], decode=_decode_cached)
            values[part] = numeric(rows)
        col = {r: i for i, r in enumerate(refs)}
        dense = dense_transform(values[:, :len(dense_refs)]).astype(np.float32)
        as_of = np.nan_to_num(values[:, col[self._as_of]], nan=-1.0) if len(values) else np.zeros(0)
        clock = int(as_of.max()) if len(as_of) else -1
        activity = np.zeros(len(items))
        for weight, (ref, size_ms) in enumerate(self._windows[::-1], start=1):
            live = as_of >= clock - size_ms  # updated within the window: its count is current
            activity += np.where(live, np.nan_to_num(values[:, col[ref]]), 0.0) * (10.0 ** (weight - 1))
        order = np.argsort(-activity, kind="stable")
        trending = [items[i] for i in order if activity[i] > 0]
        snap = ItemSnapshot(served.version, served.catalogue, served.index, dense, trending, clock, time.time(),
                            (time.perf_counter() - started) * 1000, refs, values, stamps, len(changed))
        keep = {served.version} | ({current.version} if (current := self.model()) else set()) | {m.version for m in self.also()}
        self._by_version = {v: s for v, s in {**self._by_version, served.version: snap}.items() if v in keep}
        return snap

    def prepare(self, served: ServedModel) -> ItemSnapshot | None:
        """A snapshot for a model about to be swapped in. A version with the catalogue and item
        features of one already read (most deltas) takes that snapshot as it is - no Redis round
        trips while requests are being served; the next background pass refreshes it."""
        if served.version in self._by_version:
            return self._by_version[served.version]
        same = self._same_catalogue(served, self._refs(served))
        if same is None or same.values is None:
            return self.refresh(served)
        snap = replace(same, version=served.version)
        self._by_version = {**self._by_version, served.version: snap}  # trimmed by the next refresh
        return snap

    def _refs(self, served: ServedModel) -> tuple[str, ...]:
        dense_refs = tuple(served.spec.item_refs)
        extra = tuple(r for r, _ in self._windows) + (self._as_of,)
        return dense_refs + tuple(r for r in extra if r not in dense_refs)

    def _same_catalogue(self, served: ServedModel, refs: tuple[str, ...]) -> ItemSnapshot | None:
        """A snapshot of another version with the same items and features (a delta rarely changes
        the catalogue): the new version starts from its values and re-reads only what changed."""
        for snap in self._by_version.values():
            if snap.refs == refs and len(snap.items) == len(served.catalogue) and np.array_equal(snap.items, served.catalogue):
                return snap
        return None

    def start(self) -> None:
        self._loop.start()

    def _report(self, e: Exception) -> None:  # the last good snapshot stays; reported by /readyz and /stats
        self.errors += 1
        self.last_error = str(e)

    def stop(self) -> None:
        self._loop.stop()
