"""Most interacted-with items so far: the non-personalised floor.

>>> pop = Popularity()
>>> for item in [0, 1, 1, 2, 1, 2]:
...     pop.learn("u", item, 0)
>>> pop.scores("v", np.array([0, 1, 2, 3])).tolist()
[1.0, 3.0, 2.0, 0.0]
"""

from __future__ import annotations

import numpy as np

from models.baselines.growable import Growable


class Popularity:
    def __init__(self) -> None:
        self.counts = Growable()

    def learn(self, user: str, item: int, t_ms: int) -> None:
        self.counts.add(item, 1.0)

    def refit(self, now_ms: int) -> None:
        return None

    def scores(self, user: str, items: np.ndarray) -> np.ndarray:
        return self.counts.take(items)
