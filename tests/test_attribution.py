"""The batch attribution on hand-made impressions and events, counts worked out by hand."""

from __future__ import annotations

from batch.attribution import NO_ARM, by_source_and_position, by_version, events_frame, impressions_frame

MIN = 60_000


def _list(request_id: str, user: str, version: str, at: int, items: list[tuple[str, list[str]]], arm=None,
          clock: bool = True) -> dict:  # noqa: ANN001
    return {"request_id": request_id, "user_id": user, "model_version": version, "arm": arm,
            "served_at_ms": 10**13 if clock else at, "event_clock_ms": at if clock else None,
            "items": [{"item_id": i, "position": p, "score": 1.0 - p / 10, "sources": s} for p, (i, s) in enumerate(items)]}


def _event(event_id: str, user: str, item: str, t: int, kind: str = "click") -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": kind, "event_time": t}


IMPRESSIONS = [
    _list("r1", "u1", "v1", 0, [("a", ["similar"]), ("b", ["similar", "popular"]), ("c", ["popular"])]),
    _list("r1", "u1", "v1", 0, [("a", ["similar"]), ("b", ["similar", "popular"]), ("c", ["popular"])]),  # logged twice
    _list("r2", "u2", "v1", 1_000, [("a", ["similar"]), ("d", ["popular"])]),
    _list("r3", "u1", "v2", 5 * MIN, [("c", ["similar"]), ("e", ["similar"])], arm="treatment", clock=False),
]
EVENTS = [
    _event("e1", "u1", "b", 30_000),                # r1 b: inside 10 min
    _event("e1", "u1", "b", 30_000),                # the same event again: once
    _event("e2", "u1", "a", 0),                     # r1 a: at the serving instant, not after: no
    _event("e3", "u1", "c", 10 * MIN + 1),          # r1 c: 1 ms past the window: no; r3 c (served at 5 min): yes
    _event("e4", "u2", "d", 1_000 + 10 * MIN),      # r2 d: exactly at the window's end: yes
    _event("e5", "u2", "a", 2_000, kind="view"),    # r2 a: not an engaging type: no
    _event("e6", "u3", "a", 2_000),                 # another user: nobody's impression
    _event("e7", "u1", "e", 4 * MIN),               # r3 e: before r3 was served: no
]


def test_counts_per_version_and_arm_are_the_hand_worked_ones() -> None:
    shown, events = impressions_frame(IMPRESSIONS), events_frame(EVENTS)
    assert len(shown) == 7  # r1 counted once: 3 + 2 + 2 shown items
    table = by_version(shown, events, window_ms=10 * MIN, engaging=("click", "rating"))
    got = {(r.model_version, r.arm): (r.lists, r.shown, r.engaged, r.hits, r.users) for r in table.itertuples()}
    assert got == {("v1", NO_ARM): (2, 5, 2, 2, 2), ("v2", "treatment"): (1, 2, 1, 1, 1)}
    v1 = table[table["model_version"] == "v1"].iloc[0]
    assert v1["ctr"] == 2 / 5 and v1["hit_rate"] == 1.0


def test_a_shorter_window_and_other_engaging_types_change_exactly_the_cases_they_should() -> None:
    shown, events = impressions_frame(IMPRESSIONS), events_frame(EVENTS)
    short = by_version(shown, events, window_ms=MIN, engaging=("click",))  # r1 b (30 s) only
    assert dict(zip(short["model_version"], short["engaged"])) == {"v1": 1, "v2": 0}
    views = by_version(shown, events, window_ms=10 * MIN, engaging=("view",))  # r2 a only
    assert dict(zip(views["model_version"], views["engaged"])) == {"v1": 1, "v2": 0}


def test_per_source_and_position_counts_an_item_under_each_source() -> None:
    table = by_source_and_position(impressions_frame(IMPRESSIONS), events_frame(EVENTS), 10 * MIN, ("click",))
    got = {(r.model_version, r.source, r.position): (r.shown, r.engaged) for r in table.itertuples()}
    assert got == {("v1", "similar", 0): (2, 0), ("v1", "similar", 1): (1, 1), ("v1", "popular", 1): (2, 2),
                   ("v1", "popular", 2): (1, 0), ("v2", "similar", 0): (1, 1), ("v2", "similar", 1): (1, 0)}
