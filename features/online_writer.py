"""Batched writes of feature values into the Feast online store (Redis), through Feast itself.

Rows go through ``RedisOnlineStore.online_write_batch`` (Feast's own key layout and value
encoding), so ``FeatureStore.get_online_features`` reads exactly what the job wrote. Between
flushes only the latest value per (view, entity) is kept: a hot item updated 500 times in
100 ms costs one Redis write, which is what lets one process keep up with the stream.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from feast import FeatureView
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, Int64List, StringList, Value
from feast.value_type import ValueType

from features.store import registered_views, repo_config
from infra.settings import Settings

ValuesFn = Callable[[], dict[str, Any]]


def _to_proto(value_type: ValueType) -> Callable[[Any], Value]:
    """Python value -> Feast Value proto for the types our views use (None -> unset value)."""
    scalar = {ValueType.INT64: "int64_val", ValueType.DOUBLE: "double_val", ValueType.STRING: "string_val",
              ValueType.FLOAT: "float_val", ValueType.INT32: "int32_val", ValueType.BOOL: "bool_val"}
    lists = {ValueType.STRING_LIST: ("string_list_val", StringList), ValueType.INT64_LIST: ("int64_list_val", Int64List),
             ValueType.DOUBLE_LIST: ("double_list_val", DoubleList)}
    if value_type in scalar:
        attr = scalar[value_type]
        return lambda v: Value() if v is None else Value(**{attr: v})
    if value_type in lists:
        attr, cls = lists[value_type]
        return lambda v: Value() if v is None else Value(**{attr: cls(val=v)})
    raise TypeError(f"feature type {value_type} is not supported by the online writer: add it to _to_proto")


class OnlineWriter:
    """Stage feature updates per entity, write them to Redis in batches."""

    def __init__(self, settings: Settings, views: dict[str, FeatureView] | None = None) -> None:
        config = repo_config(settings)
        config.online_store.skip_dedup = True  # our values are already the latest per entity
        self._config = config
        self._store = RedisOnlineStore()
        self.views = views if views is not None else registered_views(settings)
        self._fields = {
            name: [(f.name, _to_proto(f.dtype.to_value_type())) for f in view.features]
            for name, view in self.views.items()
        }
        self._join_key = {name: view.join_keys[0] for name, view in self.views.items()}
        self._pending: dict[str, dict[str, tuple[ValuesFn, int]]] = {name: {} for name in self.views}
        self.pending_rows = 0
        self.batches = 0
        self.rows_written = 0
        self.last_flush = time.monotonic()

    def require(self, view: str, produced: dict[str, Any]) -> None:
        """Fail fast if the computation and the registry disagree on a view's features."""
        registered = {name for name, _ in self._fields.get(view, [])}
        if view not in self._fields or set(produced) != registered:
            raise RuntimeError(
                f"feature view {view!r}: registry has {sorted(registered)}, the job computes {sorted(produced)}; "
                "run `recsys features apply` so the registry matches the code"
            )

    def stage(self, view: str, entity_id: str, values: ValuesFn, event_time_ms: int) -> None:
        """Remember that ``entity_id``'s ``view`` features changed; ``values`` is called at flush."""
        pending = self._pending[view]
        if entity_id not in pending:
            self.pending_rows += 1
        pending[entity_id] = (values, event_time_ms)

    def flush(self) -> int:
        """Write every staged entity once; returns the number of rows written."""
        written = 0
        for view_name, pending in self._pending.items():
            if not pending:
                continue
            fields = self._fields[view_name]
            join_key = self._join_key[view_name]
            rows = []
            for entity_id, (values_fn, ts_ms) in pending.items():
                values = values_fn()
                key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity_id)])
                protos = {name: conv(values[name]) for name, conv in fields}
                rows.append((key, protos, datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc), None))
            self._store.online_write_batch(self._config, self.views[view_name], rows, None)
            written += len(rows)
            self.batches += 1
            pending.clear()
        self.pending_rows = 0
        self.rows_written += written
        self.last_flush = time.monotonic()
        return written

    def due(self, max_wait_ms: int, max_rows: int) -> bool:
        return self.pending_rows >= max_rows or (
            self.pending_rows > 0 and (time.monotonic() - self.last_flush) * 1000 >= max_wait_ms
        )
