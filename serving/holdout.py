"""Does the live API beat popularity? HR@K on events it has not seen yet.

At a day boundary the served model and features know everything before it. For every user with
a positive interaction in the held-out period after it, the API's top-K (as served: candidates,
filters, ranking) is a hit if it contains one of those items; the baseline is the most
trained-on items of the served catalogue. Both exclude the items the user interacted with before
the boundary (the API through its ``exclude`` parameter, as a shop would pass past purchases):
MovieLens users rate an item once, so a list of already-rated items can never hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pandas as pd

from batch.training_data import labels
from infra.settings import TrainingSettings
from streaming.events import Event


@dataclass
class HoldoutResult:
    k: int
    users: int
    hr_api: float
    hr_popularity: float
    model_version: str

    def describe(self) -> str:
        return (f"HR@{self.k} on the held-out period: API {self.hr_api:.3f} vs popularity {self.hr_popularity:.3f} "
                f"({self.users} users, model {self.model_version})")


def relevant_items(cfg: TrainingSettings, holdout: list[Event]) -> dict[str, set[str]]:
    """Positive items per user in the held-out events."""
    frame = pd.DataFrame([{"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type.value,
                           "value": e.value} for e in holdout])
    if frame.empty:
        return {}
    positives = frame[labels(cfg, frame) == 1.0]
    return {u: set(g) for u, g in positives.groupby("user_id")["item_id"]}


def evaluate(base_url: str, cfg: TrainingSettings, history: list[Event], holdout: list[Event], k: int = 10) -> HoldoutResult:
    relevant = relevant_items(cfg, holdout)
    before: dict[str, set[str]] = {}
    for e in history:
        if e.user_id in relevant:
            before.setdefault(e.user_id, set()).add(e.item_id)
    hits_api = hits_pop = 0
    version = ""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        popular = client.get("/popular", params={"k": 1000}).json()["items"] if relevant else []
        for user, items in sorted(relevant.items()):
            known = sorted(before.get(user, set()))
            rec = client.post("/recommendations", json={"user_ids": [user], "k": k, "exclude": {user: known}})
            rec.raise_for_status()
            body = rec.json()["results"][0]
            version = body["model_version"]
            seen = set(body["recent_items"]) | set(known)
            hits_api += bool({i["item_id"] for i in body["items"]} & items)
            hits_pop += bool(set([i for i in popular if i not in seen][:k]) & items)
    n = len(relevant)
    return HoldoutResult(k, n, hits_api / n if n else float("nan"), hits_pop / n if n else float("nan"), version)
