"""Which embedding row an id uses: hashed buckets, or a managed table with admission and expiry.

``HashedIds`` (the default, ``model.ids: hashed``): ``crc32(id) % rows``. Nothing to store, any
id gets a row at once, but two ids can share one, popular or not.

``ManagedIds`` (``model.ids: managed``): an id -> row map, like TorchRec's managed-collision
modules (which need GPU kernels; this one is plain Python, a dict lookup per id):

* an id gets a row of its own only after ``min_count`` occurrences (the frequency filter); until
  then, and after it is evicted, it uses row 0, shared by every id without a row (what "some
  id we know nothing about" looks like);
* an id unseen for ``ttl_ms`` of event time loses its row (expiry), which goes back to the free
  list; ids still waiting for admission are forgotten after the same time;
* when no row is free an id waits; the table never outgrows its ``capacity`` rows.

So the hot set never collides, the long tail costs no rows, and the size stays bounded.

>>> ids = ManagedIds(capacity=3, min_count=2, ttl_ms=1000)
>>> ids.observe("a", 0), ids.observe("a", 10)      # admitted on its second occurrence
(None, 1)
>>> ids.rows(["a", "b"]).tolist()                  # "b" has no row: the shared row 0
[1, 0]
>>> _ = ids.observe("b", 20); _ = ids.observe("b", 30)
>>> ids.observe("c", 40), ids.observe("c", 50)     # full (rows 1 and 2 taken): "c" waits
(None, None)
>>> ids.expire(now_ms=1025)                        # "a" unseen since 10: evicted
[('a', 1)]
>>> ids.observe("c", 1030)                         # ... and its row is free again
1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.ids import bucket_tensor
from streaming.events import DAY_MS

SHARED_ROW = 0
IDS_FILE = "ids.parquet"


@dataclass
class HashedIds:
    capacity: int

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        return bucket_tensor(ids, self.capacity)

    @property
    def key(self) -> tuple:
        return ("hashed", self.capacity)


@dataclass
class ManagedIds:
    capacity: int
    min_count: int = 1
    ttl_ms: int | None = None
    row_of: dict[str, int] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)  # admitted ids
    waiting: dict[str, list[int]] = field(default_factory=dict)  # id -> [occurrences, last seen]
    free: list[int] = field(default_factory=list)
    version: int = 0  # bumped on every admission/eviction (caches of rows key on it)

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError(f"a managed id table needs at least 2 rows (row {SHARED_ROW} is shared), got {self.capacity}")
        if not self.free and not self.row_of:
            self.free = list(range(self.capacity - 1, SHARED_ROW, -1))  # pop() hands out 1, 2, 3, ...

    @property
    def key(self) -> tuple:
        return ("managed", id(self), self.version)

    def __len__(self) -> int:
        """Ids with a row of their own."""
        return len(self.row_of)

    def observe(self, entity_id: str, t_ms: int) -> int | None:
        """Count one occurrence; returns the row when this occurrence admitted the id."""
        if entity_id in self.row_of:
            self.last_seen[entity_id] = max(self.last_seen[entity_id], t_ms)
            return None
        entry = self.waiting.setdefault(entity_id, [0, t_ms])
        entry[0] += 1
        entry[1] = max(entry[1], t_ms)
        if entry[0] < self.min_count or not self.free:
            return None
        del self.waiting[entity_id]
        row = self.free.pop()
        self.row_of[entity_id], self.last_seen[entity_id] = row, entry[1]
        self.version += 1
        return row

    def expire(self, now_ms: int) -> list[tuple[str, int]]:
        """Evict ids unseen for ``ttl_ms`` (their rows become free) and forget stale waiting ids."""
        if self.ttl_ms is None:
            return []
        cutoff = now_ms - self.ttl_ms
        evicted = [(i, self.row_of[i]) for i, t in self.last_seen.items() if t < cutoff]
        for entity_id, row in evicted:
            del self.row_of[entity_id], self.last_seen[entity_id]
            self.free.append(row)
        for entity_id in [i for i, (_, t) in self.waiting.items() if t < cutoff]:
            del self.waiting[entity_id]
        if evicted:
            self.free.sort(reverse=True)
            self.version += 1
        return evicted

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        get = self.row_of.get
        return torch.tensor([get(i, SHARED_ROW) for i in ids], dtype=torch.long)

    # -- storage: one Parquet file per table kind, in each model version ------------------------
    def to_arrow(self) -> pa.Table:
        admitted = list(self.row_of)
        waiting = list(self.waiting)
        return pa.table({
            "id": admitted + waiting,
            "row": [self.row_of[i] for i in admitted] + [None] * len(waiting),
            "count": [0] * len(admitted) + [self.waiting[i][0] for i in waiting],
            "last_seen_ms": [self.last_seen[i] for i in admitted] + [self.waiting[i][1] for i in waiting],
        }, schema=pa.schema([("id", pa.string()), ("row", pa.int64()), ("count", pa.int64()), ("last_seen_ms", pa.int64())]))

    @classmethod
    def from_arrow(cls, table: pa.Table, capacity: int, min_count: int, ttl_ms: int | None) -> "ManagedIds":
        d = table.to_pydict()
        out = cls(capacity, min_count, ttl_ms, row_of={}, free=[SHARED_ROW])  # free list rebuilt below
        for entity_id, row, count, seen in zip(d["id"], d["row"], d["count"], d["last_seen_ms"]):
            if row is None:
                out.waiting[entity_id] = [count, seen]
            else:
                out.row_of[entity_id], out.last_seen[entity_id] = row, seen
        taken = set(out.row_of.values())
        out.free = [r for r in range(capacity - 1, SHARED_ROW, -1) if r not in taken]
        return out


@dataclass
class ModelIds:
    """The row mapping of both tables of one model version."""

    users: HashedIds | ManagedIds
    items: HashedIds | ManagedIds

    @property
    def managed(self) -> bool:
        return isinstance(self.items, ManagedIds)

    @property
    def key(self) -> tuple:
        return (self.users.key, self.items.key)

    def save(self, directory: Path) -> Path | None:
        """Write ``ids.parquet`` (managed tables only); returns its path."""
        if not self.managed:
            return None
        tables = []
        for name, ids in (("user", self.users), ("item", self.items)):
            table = ids.to_arrow()
            tables.append(table.append_column("table", pa.array([name] * table.num_rows, pa.string())))
        path = Path(directory) / IDS_FILE
        pq.write_table(pa.concat_tables(tables), path)
        return path


def model_ids(cfg, directory: Path | None = None) -> ModelIds:  # noqa: ANN001 - infra.settings.ModelSettings
    """The mapping a model version uses: hashed, or its managed tables (from ``directory/ids.parquet``,
    empty when there is no file yet)."""
    if cfg.ids == "hashed":
        return ModelIds(HashedIds(cfg.user_buckets), HashedIds(cfg.item_buckets))
    ttl = None if cfg.id_ttl_days is None else int(cfg.id_ttl_days * DAY_MS)
    path = None if directory is None else Path(directory) / IDS_FILE
    if path is None or not path.is_file():
        return ModelIds(ManagedIds(cfg.user_buckets, cfg.id_min_count, ttl), ManagedIds(cfg.item_buckets, cfg.id_min_count, ttl))
    table = pq.read_table(path)
    kinds = table.column("table").to_pylist()

    def part(name: str, capacity: int) -> ManagedIds:
        mask = pa.array([k == name for k in kinds])
        return ManagedIds.from_arrow(table.filter(mask).drop(["table"]), capacity, cfg.id_min_count, ttl)

    return ModelIds(part("user", cfg.user_buckets), part("item", cfg.item_buckets))


def id_rows(mapping) -> ModelIds:  # noqa: ANN001 - ModelSettings or ModelIds
    """Callers that only have the model settings get the hashed mapping."""
    return mapping if isinstance(mapping, ModelIds) else model_ids(mapping.model_copy(update={"ids": "hashed"}))


def training_ids(cfg, events: Iterable[tuple[str, str, int]]) -> ModelIds:  # noqa: ANN001 - ModelSettings
    """The row mapping a model is trained with: hashed, or managed tables filled from its training
    events ``(user, item, event_time)`` in time order, with the frequency filter and the expiry the
    streaming trainer applies (so nightly and online admit ids by the same rule)."""
    ids = model_ids(cfg)
    if not ids.managed:
        return ids
    now = None
    for user, item, t in events:
        ids.users.observe(user, t)
        ids.items.observe(item, t)
        now = t if now is None else max(now, t)
    if now is not None:
        ids.users.expire(now)
        ids.items.expire(now)
    return ids

