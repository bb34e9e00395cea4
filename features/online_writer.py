"""Batched writes of feature values into the Feast online store (Redis), in Feast's layout.

Keys and hash fields come from features.redis_layout and values are Feast ``Value`` protos,
exactly as ``RedisOnlineStore.online_write_batch`` does, so
``FeatureStore.get_online_features`` reads what the job wrote. Two things differ: the field
hashes and entity keys are computed once and cached (Feast recomputes a murmur3 per feature per
row), and between flushes only the latest value per (view, entity) is kept, so a hot item updated
500 times in 100 ms costs one Redis write.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, Callable

import redis
from feast import FeatureView
from feast.protos.feast.types.Value_pb2 import DoubleList, Int64List, StringList, Value
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from features.redis_layout import EntityKeys, feature_field, timestamp_field
from features.store import registered_views
from infra.settings import Settings

ValuesFn = Callable[[], dict[str, Any]]
EMPTY = Value().SerializeToString()
MAX_CACHED_KEYS = 500_000


def _to_proto(value_type: ValueType) -> Callable[[Any], bytes]:
    """Python value -> serialised Feast Value proto for our views' types (None -> unset value)."""
    scalar = {ValueType.DOUBLE: "double_val", ValueType.STRING: "string_val",
              ValueType.FLOAT: "float_val", ValueType.INT32: "int32_val", ValueType.BOOL: "bool_val"}
    lists = {ValueType.STRING_LIST: ("string_list_val", StringList), ValueType.INT64_LIST: ("int64_list_val", Int64List),
             ValueType.DOUBLE_LIST: ("double_list_val", DoubleList)}
    if value_type == ValueType.INT64:
        return _int64_bytes
    if value_type in scalar:
        attr = scalar[value_type]
        return lambda v: EMPTY if v is None else Value(**{attr: v}).SerializeToString()
    if value_type in lists:
        attr, cls = lists[value_type]
        return lambda v: EMPTY if v is None else Value(**{attr: cls(val=v)}).SerializeToString()
    raise TypeError(f"feature type {value_type} is not supported by the online writer: add it to _to_proto")


@lru_cache(maxsize=65536)
def _int64_cached(v: int) -> bytes:
    return Value(int64_val=v).SerializeToString()


def _int64_bytes(v: int | None) -> bytes:
    """Counts repeat a lot (small integers), so their encodings are cached."""
    return EMPTY if v is None else _int64_cached(v)


class OnlineWriter:
    """Stage feature updates per entity, write them to Redis in batches."""

    def __init__(self, settings: Settings, views: dict[str, FeatureView] | None = None) -> None:
        self._entity_keys = EntityKeys(settings, MAX_CACHED_KEYS)
        self._key_ttl = self._entity_keys.key_ttl_s
        r = settings.redis
        self._redis = redis.Redis(host=r.host, port=r.port, password=r.secret)
        self.views = views if views is not None else registered_views(settings)
        self._fields = {
            name: [(f.name, _to_proto(f.dtype.to_value_type())) for f in view.features]
            for name, view in self.views.items()
        }
        self._hash_keys = {
            name: {f.name: feature_field(f"{name}:{f.name}") for f in view.features} for name, view in self.views.items()
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

    def ping(self) -> None:
        """Fail now, with the address, if Redis cannot be reached."""
        try:
            self._redis.ping()
        except redis.ConnectionError as exc:
            kw = self._redis.connection_pool.connection_kwargs
            raise ConnectionError(f"Redis at {kw.get('host')}:{kw.get('port')} is unreachable ({exc}): start it "
                                  "(`recsys up`) or fix settings.redis") from exc

    def flush(self) -> int:
        """Write every staged entity once (one pipelined round trip); returns the rows written."""
        written = 0
        with self._redis.pipeline(transaction=False) as pipe:
            for view_name, pending in self._pending.items():
                if not pending:
                    continue
                fields = self._fields[view_name]
                hash_keys = self._hash_keys[view_name]
                join_key = self._join_key[view_name]
                ts_field = timestamp_field(view_name)
                for entity_id, (values_fn, ts_ms) in pending.items():
                    values = values_fn()
                    mapping = {hash_keys[name]: conv(values[name]) for name, conv in fields}
                    mapping[ts_field] = Timestamp(seconds=ts_ms // 1000, nanos=(ts_ms % 1000) * 1_000_000).SerializeToString()
                    key = self._entity_keys.key(join_key, entity_id)
                    pipe.hset(key, mapping=mapping)
                    if self._key_ttl:
                        pipe.expire(key, self._key_ttl)
                written += len(pending)
                self.batches += 1
                pending.clear()
            if written:
                pipe.execute()
        self.pending_rows = 0
        self.rows_written += written
        self.last_flush = time.monotonic()
        return written

    def ms_since_write(self) -> float:
        return (time.monotonic() - self.last_flush) * 1000

    def due(self, max_wait_ms: int, max_rows: int) -> bool:
        return self.pending_rows >= max_rows or (self.pending_rows > 0 and self.ms_since_write() >= max_wait_ms)
