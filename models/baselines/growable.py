"""A float vector indexed by catalogue position that grows as new items arrive.

>>> g = Growable()
>>> g.add(3, 2.0)
>>> g.take(np.array([0, 3, 9])).tolist()
[0.0, 2.0, 0.0]
"""

from __future__ import annotations

import numpy as np


class Growable:
    def __init__(self, capacity: int = 1024) -> None:
        self.values = np.zeros(capacity)

    def _fit(self, index: int) -> None:
        if index >= len(self.values):
            grown = np.zeros(max(index + 1, 2 * len(self.values)))
            grown[:len(self.values)] = self.values
            self.values = grown

    def add(self, index: int, amount: float) -> None:
        self._fit(index)
        self.values[index] += amount

    def take(self, items: np.ndarray) -> np.ndarray:
        """Values at ``items`` (0 for an index never added to)."""
        items = np.asarray(items, dtype=np.int64)
        if len(items) and items.max() >= len(self.values):
            self._fit(int(items.max()))
        return self.values[items]
