"""Checks on the features the stream job wrote, read back through Feast (shared by job tests)."""

from __future__ import annotations

import pandas as pd
import pytest

from features import names
from features.store import feature_store


def read_online(settings, view: str, key: str, ids: list[str]) -> pd.DataFrame:
    store = feature_store(settings)
    fv = store.get_feature_view(view)
    refs = [f"{view}:{f.name}" for f in fv.features]
    out = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_df()
    return out.set_index(key)


def assert_online_equals_backfill(s, result) -> None:
    for view, frame in result.frames(s).items():
        key = names.USER_KEY if view.startswith("user") else names.ITEM_KEY
        frame = frame.set_index(key).drop(columns=["event_timestamp"])
        online = read_online(s, view, key, list(frame.index))[frame.columns]
        for column in frame.columns:
            for entity, want in frame[column].items():
                got = online.loc[entity, column]
                if isinstance(want, list):
                    assert got is not None and list(got) == want, (view, column, entity)
                elif want is None or (isinstance(want, float) and pd.isna(want)):
                    assert got is None or pd.isna(got), (view, column, entity)
                else:
                    assert got == pytest.approx(want), (view, column, entity)
