"""The feature registry as code: entities, push sources and feature views (applied with Feast).

Streaming features are written online by the Flink job (features.online_writer, Feast's own
Redis layout); each view's batch source is a Parquet file of feature snapshots written by the
backfill (batch.backfill), which is what Feast's historical retrieval joins point-in-time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String

from features import names
from infra.settings import Settings

TIMESTAMP_FIELD = "event_timestamp"

user = Entity(name="user", join_keys=[names.USER_KEY], value_type=ValueType.STRING, description="a person using the product")
item = Entity(name="item", join_keys=[names.ITEM_KEY], value_type=ValueType.STRING, description="something that can be recommended")


def _dtype(field: str):  # noqa: ANN202 - a Feast type
    if field in ("recent_items", "recent_types", "covisit_items"):
        return Array(String)
    if field in ("recent_times_ms", "covisit_counts"):
        return Array(Int64)
    if field in ("avg_rating", "trending"):
        return Float64
    if field in names.attribute_fields():
        return String
    return Int64


_ARROW = {Array(String): pa.list_(pa.string()), Array(Int64): pa.list_(pa.int64()), Float64: pa.float64(),
          String: pa.string(), Int64: pa.int64()}


def offline_schema(settings: Settings, view: str) -> pa.Schema:
    """The Arrow schema of a computed view's offline file: entity key, features, timestamp."""
    spec = next(v for v in names.VIEWS if v.name == view)
    key = names.USER_KEY if spec.entity == "user" else names.ITEM_KEY
    return pa.schema([pa.field(key, pa.string()),
                      *(pa.field(f, _ARROW[_dtype(f)]) for f in spec.fields(settings.features)),
                      pa.field(TIMESTAMP_FIELD, pa.timestamp("ns", tz="UTC"))])


def snapshot_table(settings: Settings, view: str) -> Path:
    """Parquet file holding the offline (historical) rows of one feature view.

    Parquet, not Delta: the rows are derived (rebuilt from the Delta ``events`` table by the
    backfill at a pinned version) and Feast's DuckDB offline store reads Parquet with no
    extension download, which matters on machines without internet.
    """
    return settings.paths.lake_dir / "features" / f"{view}.parquet"


def _view(settings: Settings, name: str, entity: Entity, fields: list[str], description: str,
          loaded: bool = False) -> tuple[PushSource, FeatureView]:
    batch = FileSource(
        name=f"{name}_snapshots",
        path=str(snapshot_table(settings, name)),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_FIELD,
    )
    push = PushSource(name=f"{name}_push", batch_source=batch)
    ttl = None if loaded else settings.features.ttl_days  # catalogue metadata does not age
    view = FeatureView(
        name=name,
        entities=[entity],
        schema=[Field(name=f, dtype=_dtype(f)) for f in fields],
        source=push,
        ttl=timedelta(days=ttl) if ttl else timedelta(0),
        online=True,
        description=description,
        tags={"loaded_by": "batch.catalogue"} if loaded else {"computed_by": "streaming.job.feature_job", "backfill": "batch.backfill"},
    )
    return push, view


def feature_views(settings: Settings) -> dict[str, FeatureView]:
    return {v.name: v for _, v in _sources_and_views(settings)}


def _sources_and_views(settings: Settings) -> list[tuple[PushSource, FeatureView]]:
    cfg, entities = settings.features, {"user": user, "item": item}
    return [*(_view(settings, v.name, entities[v.entity], v.fields(cfg), v.about(cfg)) for v in names.VIEWS),
            *(_view(settings, v.name, entities[v.entity], v.fields(cfg), v.about(cfg), loaded=True) for v in names.LOADED_VIEWS)]


def registry_objects(settings: Settings) -> list:
    """Everything `feast apply` registers."""
    objects: list = [user, item]
    for push, view in _sources_and_views(settings):
        objects.extend([push, view])
    return objects
