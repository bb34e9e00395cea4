"""The yardsticks `recsys evaluate` runs beside the engine, built from ``evaluation`` settings.

One place maps a baseline's name to its class and hyperparameters, so the replay, the benchmark
and the docs all mean the same models.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from infra.settings import EvaluationSettings
from models.baselines import EASE, ItemKNN, SASRec


class Baseline(Protocol):
    def learn(self, user: str, item: int, t_ms: int) -> None: ...

    def refit(self, now_ms: int) -> None: ...

    def scores(self, user: str, items: np.ndarray) -> np.ndarray: ...


def build_baselines(cfg: EvaluationSettings) -> dict[str, Baseline]:
    """The configured baselines, by name, in the configured order."""
    make = {
        "item_knn": lambda: ItemKNN(**cfg.item_knn.model_dump()),
        "ease": lambda: EASE(**cfg.ease.model_dump()),
        "sasrec": lambda: SASRec(**cfg.sasrec.model_dump()),
    }
    return {name: make[name]() for name in cfg.baselines}
