"""Does the live API beat popularity and item-kNN? HR@K on events it has not seen yet.

At a day boundary the served model and features know everything before it. For every user with
a positive interaction in the held-out period after it, the API's top-K (as served: candidates,
filters, ranking) is a hit if it contains one of those items; the yardsticks are the most
trained-on items of the served catalogue and item-kNN (``models.baselines.ItemKNN`` with the
``evaluation.item_knn`` settings `recsys evaluate` uses) over every item seen so far. All exclude
the items the user interacted with before the boundary (the API through its ``exclude``
parameter, as a shop would pass past purchases): MovieLens users rate an item once, so a list of
already-rated items can never hit.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from itertools import groupby
from typing import Callable

import httpx
import numpy as np

from features import names
from infra.settings import ItemKNNSettings, Settings
from models.baselines import ItemKNN
from serving.online_features import OnlineFeatureReader
from streaming.events import Event
from streaming.vocabulary import EventVocabulary


class KnnYardstick:
    """Item-kNN over item ids: learns every event (as in `recsys evaluate`), recommends the top K
    of the items it has seen that the user has not.

    >>> knn = KnnYardstick(ItemKNNSettings())
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "w")]:
    ...     knn.learn(user, item, 0)
    >>> knn.top("c", 1, {"w"}), knn.top("d", 4, set())  # c has no neighbours yet: the most touched item
    (['x'], ['x', 'y', 'z', 'w'])
    """

    def __init__(self, cfg: ItemKNNSettings) -> None:
        self.knn = ItemKNN(**cfg.model_dump())
        self.index: dict[str, int] = {}

    def learn(self, user: str, item: str, t_ms: int) -> None:
        self.knn.learn(user, self.index.setdefault(item, len(self.index)), t_ms)

    def top(self, user: str, k: int, exclude: set[str]) -> list[str]:
        items = list(self.index)
        scores = self.knn.scores(user, np.arange(len(items)))
        scores[[self.index[i] for i in exclude if i in self.index]] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [items[i] for i in order if np.isfinite(scores[i])]


@dataclass
class HoldoutResult:
    k: int
    users: int
    hr_api: float
    hr_popularity: float
    hr_item_knn: float
    model_version: str

    def describe(self) -> str:
        return (f"HR@{self.k} on the held-out period: API {self.hr_api:.3f} vs item-kNN {self.hr_item_knn:.3f} vs "
                f"popularity {self.hr_popularity:.3f} ({self.users} users, model {self.model_version})")


def relevant_items(vocabulary: EventVocabulary, holdout: list[Event]) -> dict[str, set[str]]:
    """Positive items per user in the held-out events."""
    relevant: dict[str, set[str]] = {}
    for e in holdout:
        if vocabulary.label(e.event_type.value, e.value) == 1.0:
            relevant.setdefault(e.user_id, set()).add(e.item_id)
    return relevant


def evaluate(base_url: str, settings: Settings, history: list[Event], holdout: list[Event], k: int = 10) -> HoldoutResult:
    relevant = relevant_items(EventVocabulary.from_settings(settings), holdout)
    before: dict[str, set[str]] = {}
    knn = KnnYardstick(settings.evaluation.item_knn)
    for e in history:
        knn.learn(e.user_id, e.item_id, e.event_time)
        if e.user_id in relevant:
            before.setdefault(e.user_id, set()).add(e.item_id)
    hits_api = hits_pop = hits_knn = 0
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
            hits_knn += bool(set(knn.top(user, k, seen)) & items)
    n = len(relevant)
    return HoldoutResult(k, n, *(hits / n if n else float("nan") for hits in (hits_api, hits_pop, hits_knn)), version)


@dataclass
class PrequentialResult:
    k: int
    events: int  # positive held-out events scored
    hr_api: float
    hr_popularity: float
    hr_item_knn: float
    groups: int

    def describe(self) -> str:
        return (f"HR@{self.k} per held-out event (recommend, then send it): API {self.hr_api:.3f} vs item-kNN "
                f"{self.hr_item_knn:.3f} vs popularity {self.hr_popularity:.3f} ({self.events} positive events in "
                f"{self.groups} one-minute groups)")


def prequential(base_url: str, settings: Settings, history: list[Event], holdout: list[Event],
                send: Callable[[list[Event]], None], k: int = 10, group_ms: int = 60_000,
                timeout_s: float = 60.0) -> PrequentialResult:
    """The held-out period replayed through the live system one minute of event time at a time:
    for every positive event of the minute (an item the user has not interacted with yet), the
    API's top K for that user, asked *before* the minute's events are sent, is a hit if it holds
    the item; popularity (items by labelled events so far) is the baseline. Then the minute is
    sent and the stream job's features for its users are awaited, so the next minute's requests
    see them. Item-kNN learns each minute after it is scored, as the API's features do. All exclude
    what the user interacted with before (as in :func:`evaluate`)."""
    vocabulary = EventVocabulary.from_settings(settings)
    reader = OnlineFeatureReader(settings, (f"{names.USER_RECENT}:recent_times_ms",), names.USER_KEY)
    seen: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    knn = KnnYardstick(settings.evaluation.item_knn)
    for e in history:
        knn.learn(e.user_id, e.item_id, e.event_time)
        seen[e.user_id].add(e.item_id)
        if not math.isnan(vocabulary.label(e.event_type.value, e.value)):
            counts[e.item_id] += 1
    hits_api = hits_pop = hits_knn = scored = groups = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for _, group in groupby(holdout, key=lambda e: e.event_time // group_ms):
            group = list(group)
            groups += 1
            positives = [e for e in group if vocabulary.label(e.event_type.value, e.value) == 1.0
                         and e.item_id in counts and e.item_id not in seen[e.user_id]]
            tops = _api_tops(client, sorted({e.user_id for e in positives}), seen, k, settings.serving.max_batch_users)
            ranked = [i for i, _ in counts.most_common()]
            for e in positives:
                scored += 1
                hits_api += e.item_id in tops[e.user_id]
                hits_pop += e.item_id in [i for i in ranked if i not in seen[e.user_id]][:k]
                hits_knn += e.item_id in knn.top(e.user_id, k, seen[e.user_id])
            send(group)
            _await_features(reader, group, timeout_s)
            for e in group:
                knn.learn(e.user_id, e.item_id, e.event_time)
                seen[e.user_id].add(e.item_id)
                if not math.isnan(vocabulary.label(e.event_type.value, e.value)):
                    counts[e.item_id] += 1
    return PrequentialResult(k, scored, *(hits / scored if scored else float("nan") for hits in (hits_api, hits_pop, hits_knn)),
                             groups)


def write_report(path: Path, boundary_day: str, at_boundary: HoldoutResult, per_event: PrequentialResult) -> None:
    """Both held-out checks as JSON, where the dashboard's quality panel reads them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"boundary_day": boundary_day, "written_at": time.time(), "at_boundary": asdict(at_boundary),
                               "per_event": asdict(per_event)}, indent=2, default=float))
    tmp.replace(path)


def _api_tops(client: httpx.Client, users: list[str], seen: dict[str, set[str]], k: int, per_call: int) -> dict[str, set[str]]:
    tops: dict[str, set[str]] = {}
    for lo in range(0, len(users), per_call):
        part = users[lo:lo + per_call]
        rec = client.post("/recommendations", json={"user_ids": part, "k": k, "exclude": {u: sorted(seen[u]) for u in part}})
        rec.raise_for_status()
        for r in rec.json()["results"]:
            tops[r["user_id"]] = {i["item_id"] for i in r["items"]}
    return tops


def _await_features(reader: OnlineFeatureReader, group: list[Event], timeout_s: float) -> None:
    """Until every user of the group has their newest event of the group in the online store."""
    newest: dict[str, int] = {}
    for e in group:
        newest[e.user_id] = max(newest.get(e.user_id, 0), e.event_time)
    users = sorted(newest)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = reader.read(users)
        if all(row[0] and max(row[0]) >= newest[u] for u, row in zip(users, rows)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stream job did not write the features of {len(users)} users within {timeout_s:.0f} s: "
                               "check `recsys stream status`")
        time.sleep(0.05)
