"""`recsys evaluate` as a library: which window is replayed, then the prequential replay of it.

The CLI and the quality benchmark both call :func:`replay_window` and :func:`evaluate`, so the
numbers a user sees and the numbers recorded are made the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from batch.catalogue import Catalogue
from batch.evaluate.catalogue_churn import RELAUNCH_MARK
from batch.evaluate.prequential import Prequential
from batch.evaluate.prequential_report import Report
from infra.settings import Settings
from models.categories import ItemCategories
from streaming.events import DAY_MS, Event


@dataclass
class ReplayWindow:
    """The events of a replay and where its evaluated period starts."""

    events: list[Event]
    start_ms: int
    description: str
    scenario: dict[str, Any] = field(default_factory=dict)


def replay_window(events: list[Event], eval_days: float, skip_last_days: float = 0.0, renew_items: float = 0.0,
                  renew_every_days: float = 1.0) -> ReplayWindow:
    """The last ``eval_days`` (before the last ``skip_last_days``: a validation window) of ``events``,
    with a share ``renew_items`` of the catalogue relaunched under new ids every ``renew_every_days``."""
    if not events:
        raise ValueError("no events to replay")
    scenario: dict[str, Any] = {}
    if skip_last_days:
        end = events[-1].event_time - int(skip_last_days * DAY_MS)
        events = [e for e in events if e.event_time < end]
        if not events:
            raise ValueError(f"--skip-last-days {skip_last_days:g} leaves no events: the file spans less than that")
        scenario["skip_last_days"] = skip_last_days
    start = events[-1].event_time - int(eval_days * DAY_MS)
    if renew_items:
        from batch.evaluate.catalogue_churn import renew_items as relaunch

        events = relaunch(events, start, int(renew_every_days * DAY_MS), renew_items)
        scenario.update(renew_items=renew_items, renew_every_days=renew_every_days)
    description = (f"the {eval_days:g} days before the last {skip_last_days:g} (a validation window)"
                   if skip_last_days else f"the last {eval_days:g} days")
    return ReplayWindow(events, start, description, scenario)


def evaluate(settings: Settings, window: ReplayWindow, k: int = 10, retrain_every_days: float = 1.0,
             progress: bool = True, catalogue: Catalogue | None = None) -> Report:
    """The prequential replay of ``window`` (recommend, then learn) with the registry's feature
    definitions, built in a scratch registry so no service is needed. ``catalogue``: the items'
    categories, for a ranker that reads them (``ranker.category_affinity``)."""
    from features.model_inputs import feature_spec
    from features.store import apply

    with tempfile.TemporaryDirectory(prefix="recsys-evaluate-") as tmp:
        scratch = settings.model_copy(update={"data_dir": Path(tmp)})
        apply(scratch)
        spec = feature_spec(scratch)
    categories = replay_categories(catalogue, window.events) if catalogue is not None else None
    report = Prequential(settings, spec, k=k, retrain_every_days=retrain_every_days, progress=progress,
                         categories=categories).run(window.events, window.start_ms)
    report.scenario = window.scenario
    return report


def replay_categories(catalogue: Catalogue, events: Sequence[Event]) -> ItemCategories:
    """The catalogue's categories, with every relaunched id of a churn replay (``"50~3"``) carrying
    its original's, as a shop's new listing has its metadata on day one."""
    frame = catalogue.frame()
    known = dict(zip(frame["item_id"], frame["category"]))
    relaunched = {e.item_id for e in events if e.item_id not in known and e.item_id.split(RELAUNCH_MARK)[0] in known}
    items = [*known, *sorted(relaunched)]
    return ItemCategories.from_pairs(items, [known.get(i, known.get(i.split(RELAUNCH_MARK)[0])) for i in items])


__all__ = ["ReplayWindow", "evaluate", "replay_categories", "replay_window"]
