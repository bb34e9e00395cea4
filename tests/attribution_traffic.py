"""Served lists and the events after them, with a known structure, for the attribution tests."""

from __future__ import annotations

import random

WINDOW = 10_000
ENGAGING = ("click", "purchase")


def traffic(seed: int, n_lists: int = 300, t0: int = 0) -> tuple[list[dict], list[dict]]:
    """Lists served to a few users over time, and events after them: some on shown items within
    the window, some after it, some of other types or items, some duplicated."""
    rng = random.Random(seed)
    users, items = [f"u{i}" for i in range(12)], [f"i{i}" for i in range(30)]
    imps, events = [], []
    t = 0
    for n in range(n_lists):
        t += rng.randint(0, 400)
        user = rng.choice(users)
        shown = rng.sample(items, 5)
        rec = {"request_id": f"r{n}", "user_id": user, "model_version": rng.choice(["v1", "v2"]),
               "arm": rng.choice([None, "control", "canary"]), "served_at_ms": 10 ** 12 + t, "event_clock_ms": t0 + t,
               "items": [{"item_id": it, "position": p, "score": 1 - p / 10, "sources": rng.sample(["similar", "popular"], rng.randint(1, 2))}
                         for p, it in enumerate(shown)]}
        imps.append(rec)
        if rng.random() < 0.05:
            imps.append(dict(rec))  # logged twice
        for _ in range(rng.randint(0, 3)):
            ev = {"event_id": f"e{len(events)}", "user_id": user, "item_id": rng.choice(shown + items[:3]),
                  "event_type": rng.choice(["click", "purchase", "view"]), "event_time": t0 + t + rng.choice([0, 1, 500, WINDOW, WINDOW + 1, 3 * WINDOW])}
            events.append(ev)
            if rng.random() < 0.1:
                events.append(dict(ev))  # delivered twice
    return imps, events
