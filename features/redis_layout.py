"""Feast's Redis layout, spelt once: an entity's key, a feature's hash field, a view's timestamp field.

Feast stores each entity as one Redis hash: the key is ``_redis_key(project, EntityKey)``, each
feature a field ``mmh3("view:feature")``, each view's write time a field ``_ts:<view>``. The
writer (features.online_writer) and the request-path reader (serving.online_features) both ask
this module, so they cannot disagree on where a value lives (tests also read back through
Feast's own ``get_online_features``).
"""

from __future__ import annotations

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from features.store import repo_config
from infra.settings import Settings

def feature_field(ref: str) -> bytes:
    """The hash field of a ``view:feature`` reference."""
    return _mmh3(ref)


def timestamp_field(view: str) -> str:
    """The hash field holding a view's write time (a protobuf Timestamp)."""
    return f"_ts:{view}"


class EntityKeys:
    """Redis keys of one project's entities, computed once per entity (request threads may share
    an instance: it only does atomic dict operations)."""

    def __init__(self, settings: Settings, max_cached: int) -> None:
        config = repo_config(settings)
        self.project = config.project
        self.key_version = config.entity_key_serialization_version
        self.key_ttl_s = config.online_store.key_ttl_seconds
        self._keys: dict[tuple[str, str], bytes] = {}
        self._max_cached = max_cached  # keys kept ready; the cache is dropped when full

    def key(self, join_key: str, entity_id: str) -> bytes:
        cached = self._keys.get((join_key, entity_id))
        if cached is None:
            if len(self._keys) >= self._max_cached:
                self._keys = {}
            proto = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity_id)])
            cached = self._keys[(join_key, entity_id)] = _redis_key(self.project, proto, self.key_version)
        return cached


__all__ = ["EntityKeys", "feature_field", "timestamp_field"]
