"""Synthetic interaction streams for load tests: Zipf users and items, mixed event types.

>>> gen = SyntheticEvents(n_users=100, n_items=50, seed=1)
>>> batch = gen.batch(1000, start_ms=0, step_ms=1)
>>> len(batch), all(isinstance(e, dict) for e in batch)
(1000, True)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

EVENT_TYPE_WEIGHTS = {"view": 0.62, "click": 0.22, "add_to_cart": 0.08, "purchase": 0.04, "rating": 0.04}

MALFORMED_KINDS = ("bad_json", "missing_field", "wrong_type", "unknown_event_type", "oversize", "not_utf8")


def zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    ranks = np.arange(1, n + 1, dtype=np.float64)
    weights = ranks ** (-exponent)
    return weights / weights.sum()


class SyntheticEvents:
    """Draws events with Zipf-distributed popularity; ``malformed`` is the bad-event fraction."""

    def __init__(
        self,
        n_users: int = 10_000,
        n_items: int = 5_000,
        zipf_exponent: float = 1.1,
        malformed: float = 0.0,
        seed: int = 0,
        id_prefix: str = "syn",
        max_event_bytes: int = 16 * 1024,
    ) -> None:
        if not 0.0 <= malformed <= 1.0:
            raise ValueError("malformed must be a fraction between 0 and 1")
        self.rng = np.random.default_rng(seed)
        self.user_cdf = np.cumsum(zipf_probabilities(n_users, zipf_exponent))
        self.item_cdf = np.cumsum(zipf_probabilities(n_items, zipf_exponent))
        self.types = list(EVENT_TYPE_WEIGHTS)
        self.type_p = np.array(list(EVENT_TYPE_WEIGHTS.values()))
        self.type_p /= self.type_p.sum()
        self.malformed = malformed
        self.id_prefix = id_prefix
        self.max_event_bytes = max_event_bytes
        self.counter = 0

    def batch(self, n: int, start_ms: int, step_ms: float = 1.0) -> list[dict[str, Any] | bytes]:
        """``n`` events with event times ``start_ms + i * step_ms``."""
        rng = self.rng
        users = np.searchsorted(self.user_cdf, rng.random(n) * self.user_cdf[-1])
        items = np.searchsorted(self.item_cdf, rng.random(n) * self.item_cdf[-1])
        types = rng.choice(len(self.types), size=n, p=self.type_p)
        ratings = rng.integers(1, 6, size=n)
        bad = rng.random(n) < self.malformed
        out: list[dict[str, Any] | bytes] = []
        for i in range(n):
            etype = self.types[types[i]]
            event: dict[str, Any] = {
                "event_id": f"{self.id_prefix}-{self.counter}",
                "user_id": f"u{users[i]}",
                "item_id": f"i{items[i]}",
                "event_type": etype,
                "event_time": int(start_ms + i * step_ms),
            }
            if etype == "rating":
                event["value"] = float(ratings[i])
            self.counter += 1
            out.append(self._corrupt(event) if bad[i] else event)
        return out

    def _corrupt(self, event: dict[str, Any]) -> bytes:
        kind = MALFORMED_KINDS[int(self.rng.integers(len(MALFORMED_KINDS)))]
        if kind == "bad_json":
            return json.dumps(event).encode()[:-3]
        if kind == "missing_field":
            return json.dumps({k: v for k, v in event.items() if k != "item_id"}).encode()
        if kind == "wrong_type":
            return json.dumps({**event, "event_time": "yesterday"}).encode()
        if kind == "unknown_event_type":
            return json.dumps({**event, "event_type": "teleport"}).encode()
        if kind == "oversize":
            return json.dumps({**event, "context": {"pad": "x" * self.max_event_bytes}}).encode()
        return json.dumps(event).encode().replace(b'"event_id"', b'"event_\xff\xfeid"')
