"""What the ranking model reads, taken from the Feast registry, and how it becomes tensors.

The model's inputs are not a list in the trainer: they are every numeric, non-timestamp feature
of the registered ``user`` and ``item`` views, plus the user's recent-items list as a bag. The
spec is stored with each model version, so the server reads exactly the features the model was
trained on (and refuses a model whose features the registry no longer has).

Training rows get their values through a point-in-time join over the registry's views
(``features.point_in_time``: DuckDB ASOF by default, Feast's ``get_historical_features`` on
request, both the same rows) at ``event time - 1 ms``: a feature written by the event itself, or later, can never leak into
its row. Missing history (a user's first event) means zeros, as it does online.

>>> dense_transform(np.array([0.0, 1.0, -3.0, np.nan]))
array([ 0.        ,  0.69314718, -1.38629436,  0.        ])
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features import names
from features.point_in_time import column, historical
from features.store import env_for, registered_views
from infra.settings import Settings

RECENT_REF = f"{names.USER_RECENT}:recent_items"
NUMERIC_TYPES = ("Int32", "Int64", "Float32", "Float64")


class FeatureSpecMismatch(ValueError):
    """A model was trained on features the registry does not have (any more)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Feature references ("view:feature") the model reads, in the order of its dense input."""

    user_refs: tuple[str, ...]
    item_refs: tuple[str, ...]
    recent_ref: str
    registry_digest: str

    @property
    def n_dense(self) -> int:
        return len(self.user_refs) + len(self.item_refs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "FeatureSpec":
        return cls(tuple(raw["user_refs"]), tuple(raw["item_refs"]), raw["recent_ref"], raw["registry_digest"])


def _is_model_input(dtype: str, name: str) -> bool:
    return dtype.startswith(NUMERIC_TYPES) and not name.endswith("_ms")


def feature_spec(settings: Settings) -> FeatureSpec:
    """The model's inputs as the registry defines them now."""
    views = registered_views(settings)
    user_refs: list[str] = []
    item_refs: list[str] = []
    described: dict[str, dict] = {}
    for view in sorted(views.values(), key=lambda v: v.name):
        described[view.name] = {"entities": sorted(view.entities), "fields": [(f.name, str(f.dtype)) for f in view.features]}
        if names.USER_KEY in view.join_keys and names.ITEM_KEY in view.join_keys:
            continue  # no pair views yet; they would need their own slot
        target = user_refs if names.USER_KEY in view.join_keys else item_refs
        target.extend(f"{view.name}:{f.name}" for f in view.features if _is_model_input(str(f.dtype), f.name))
    view_name, _ = RECENT_REF.split(":")
    if view_name not in views:
        raise FeatureSpecMismatch(f"the registry has no {view_name} view: run `recsys features apply`")
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return FeatureSpec(tuple(user_refs), tuple(item_refs), RECENT_REF, digest)


class RegistrySpecCache:
    """:func:`feature_spec`, re-read only when the registry changed: a file registry is re-read when
    its size or modification time moves, a SQL registry at most every ``sql_ttl_s`` seconds. Reading
    the registry costs tens of milliseconds of Python work, too much to repeat on every model swap."""

    def __init__(self, settings: Settings, sql_ttl_s: float = 10.0) -> None:
        self.settings = settings
        self.sql_ttl_s = sql_ttl_s
        self._key: object = None
        self._spec: FeatureSpec | None = None

    def _registry_key(self) -> object:
        env = env_for(self.settings)
        if env["RECSYS_FEAST_REGISTRY_TYPE"] == "file":
            try:
                st = Path(env["RECSYS_FEAST_REGISTRY_PATH"]).stat()
            except OSError:
                return None  # no registry yet: feature_spec says what to do
            return st.st_size, st.st_mtime_ns
        return int(time.monotonic() // self.sql_ttl_s)

    def __call__(self) -> FeatureSpec:
        key = self._registry_key()
        if self._spec is None or key is None or key != self._key:
            self._spec, self._key = feature_spec(self.settings), key
        return self._spec


def check_compatible(trained: FeatureSpec, current: FeatureSpec) -> None:
    """Serving a model needs every feature it was trained on, in the same order."""
    if (trained.user_refs, trained.item_refs, trained.recent_ref) != (current.user_refs, current.item_refs, current.recent_ref):
        missing = sorted(set(trained.user_refs + trained.item_refs) - set(current.user_refs + current.item_refs))
        raise FeatureSpecMismatch(
            f"the model was trained on features the registry does not define the same way (missing: {missing or 'none, order changed'}): "
            "retrain with `recsys retrain` or re-apply the matching feature definitions")


def dense_transform(values: np.ndarray) -> np.ndarray:
    """Counts and scores span orders of magnitude: sign(x) * log1p(|x|), missing -> 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return np.sign(values) * np.log1p(np.abs(values))


def _historical(settings: Settings, key: str, keys: pd.Series, times_ms: pd.Series, refs: list[str]) -> pd.DataFrame:
    return historical(settings, key, keys, times_ms, refs, engine=settings.training.pit_engine)


def point_in_time(settings: Settings, spec: FeatureSpec, users: pd.Series, items: pd.Series, at_ms: pd.Series) -> tuple[np.ndarray, list[list[str]]]:
    """Dense inputs (n, spec.n_dense) and recent-item bags for rows (user, item) as of ``at_ms``
    (exclusive: values written at ``at_ms`` or later are not visible)."""
    before = at_ms.astype("int64") - 1
    user_part = _historical(settings, names.USER_KEY, users, before, [*spec.user_refs, spec.recent_ref])
    item_part = _historical(settings, names.ITEM_KEY, items, before, list(spec.item_refs))
    rows = pd.DataFrame({names.USER_KEY: users.to_numpy(), names.ITEM_KEY: items.to_numpy(), "t": before.to_numpy()})
    rows = rows.merge(user_part, on=[names.USER_KEY, "t"], how="left").merge(item_part, on=[names.ITEM_KEY, "t"], how="left")
    return _dense(rows, (*spec.user_refs, *spec.item_refs)), _bags(rows[column(spec.recent_ref)])


def as_of(settings: Settings, spec: FeatureSpec, users: list[str], items: list[str], at_ms: int) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """User dense rows + recent bags and item dense rows at one instant (for full-catalogue ranking)."""
    user_part = _historical(settings, names.USER_KEY, pd.Series(users), pd.Series([at_ms - 1] * len(users)), [*spec.user_refs, spec.recent_ref])
    user_part = user_part.set_index(names.USER_KEY).reindex(users)
    item_part = _historical(settings, names.ITEM_KEY, pd.Series(items), pd.Series([at_ms - 1] * len(items)), list(spec.item_refs))
    item_part = item_part.set_index(names.ITEM_KEY).reindex(items)
    return _dense(user_part, spec.user_refs), _bags(user_part[column(spec.recent_ref)]), _dense(item_part, spec.item_refs)


def _dense(frame: pd.DataFrame, refs: Sequence[str]) -> np.ndarray:
    """The model's dense inputs from joined feature columns (float32, transformed)."""
    return dense_transform(frame[[column(r) for r in refs]].to_numpy(dtype=np.float64)).astype(np.float32)


def _bags(values: pd.Series) -> list[list[str]]:
    """Recent-item lists; a user with no history at that time has none."""
    return [list(r) if isinstance(r, (list, np.ndarray)) else [] for r in values]
