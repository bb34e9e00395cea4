"""Open the Feast feature store described by features/feature_store.yaml and the settings.

``feature_store.yaml`` holds the Feast configuration; the engine's settings supply the
addresses (registry location, Redis), so there is still one place for them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import yaml
from feast import FeatureStore, FeatureView
from feast.repo_config import RepoConfig

from infra.settings import Settings

REPO_DIR = Path(__file__).resolve().parent
SQL_SCHEMES = ("postgresql", "mysql", "sqlite")


class RegistryNotApplied(RuntimeError):
    """The registry has no feature views yet."""


def env_for(settings: Settings, password: str | None = None) -> dict[str, str]:
    """Values for the RECSYS_FEAST_* placeholders in feature_store.yaml (the Redis password as
    ``password``, default the real one: only ever held in memory)."""
    registry = settings.features.registry or str(settings.paths.feast_dir / "registry.db")
    sql = registry.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES and "://" in registry
    r = settings.redis
    password = password or r.secret
    redis = f"{r.host}:{r.port}" + (f",password={password}" if password else "")
    return {
        "RECSYS_FEAST_PROJECT": settings.features.project,
        "RECSYS_FEAST_REGISTRY_TYPE": "sql" if sql else "file",
        "RECSYS_FEAST_REGISTRY_PATH": registry,
        "RECSYS_FEAST_REDIS": redis,
    }


def repo_config(settings: Settings) -> RepoConfig:
    text = (REPO_DIR / "feature_store.yaml").read_text()
    raw = yaml.safe_load(string.Template(text).substitute(env_for(settings)))
    path = raw["registry"]["path"]
    if raw["registry"]["registry_type"] == "file":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif path.startswith("sqlite:///"):
        Path(path.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(repo_path=REPO_DIR, **raw)


def feature_store(settings: Settings) -> FeatureStore:
    return FeatureStore(config=repo_config(settings))


def apply(settings: Settings) -> list[str]:
    """Register entities, sources and views (Feast's `apply`); returns the view names."""
    from features.definitions import registry_objects

    store = feature_store(settings)
    objects = registry_objects(settings)
    store.apply(objects)
    return sorted(o.name for o in objects if isinstance(o, FeatureView))


def registered_views(settings: Settings, store: FeatureStore | None = None) -> dict[str, FeatureView]:
    """The feature views as the registry has them (what the job and the trainer use)."""
    store = store or feature_store(settings)
    views = {v.name: v for v in store.list_feature_views(allow_cache=False)}
    if not views:
        raise RegistryNotApplied(
            f"the feature registry ({env_for(settings)['RECSYS_FEAST_REGISTRY_PATH']}) has no feature views: "
            "run `recsys features apply` first"
        )
    return views


@dataclass(frozen=True)
class FeatureRow:
    view: str
    feature: str
    entity: str
    dtype: str
    source: str
    ttl: str


def describe(settings: Settings) -> list[FeatureRow]:
    """One row per registered feature, for `recsys features list`."""
    rows = []
    for view in sorted(registered_views(settings).values(), key=lambda v: v.name):
        ttl = "none" if not view.ttl or view.ttl.total_seconds() == 0 else str(view.ttl)
        source = view.stream_source.name if view.stream_source else (view.batch_source.name if view.batch_source else "")
        for f in view.features:
            rows.append(FeatureRow(view.name, f.name, ",".join(view.entities), str(f.dtype), source, ttl))
    return rows


def shell_exports(settings: Settings) -> str:
    """`export` lines so the plain feast CLI can use features/ (e.g. `feast -c features feature-views list`);
    a Redis password is referred to by its variable (RECSYS_REDIS__PASSWORD), never printed."""
    env = env_for(settings, password="$RECSYS_REDIS__PASSWORD" if settings.redis.password else None)
    return "\n".join(f'export {k}="{v}"' for k, v in env.items()) + "\n"


__all__ = ["apply", "describe", "env_for", "feature_store", "registered_views", "repo_config", "shell_exports"]
