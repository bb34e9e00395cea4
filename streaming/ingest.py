"""Drive a producer over an event source with pacing and a progress bar (replay, load tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streaming.events import Event
from streaming.pacing import Pacer
from streaming.producer import DeliveryReport, EventProducer


@dataclass
class IngestResult:
    report: DeliveryReport
    seconds: float

    @property
    def rate(self) -> float:
        return self.report.sent / self.seconds if self.seconds > 0 else 0.0


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9.0f} ev/s"),
        TimeElapsedColumn(),
        disable=disable,
    )


def send_events(
    producer: EventProducer,
    events: Iterable[Event | dict[str, Any] | bytes],
    *,
    pacer: Pacer | None = None,
    description: str = "sending",
    show_progress: bool = True,
    rejected: Iterable[Any] = (),
) -> IngestResult:
    """Send ``events`` in order (pacing by event time if the pacer asks), then flush. Any iterable
    works (a file ordered under a memory bound streams through); one with ``len`` shows a total."""
    start = time.perf_counter()
    for obj in rejected:
        producer.send(obj)  # rows that could not become events: validation dead-letters them
    with progress_bar(disable=not show_progress) as progress:
        total = len(events) if hasattr(events, "__len__") else None
        task = progress.add_task(description, total=total, rate=0.0)
        i = 0
        for i, obj in enumerate(events, start=1):
            if pacer is not None:
                pacer.wait(obj.event_time if isinstance(obj, Event) else None)
            producer.send(obj)
            if i % 2000 == 0:
                elapsed = time.perf_counter() - start
                progress.update(task, completed=i, rate=i / elapsed if elapsed else 0.0)
        elapsed = time.perf_counter() - start
        progress.update(task, completed=i, rate=i / elapsed if elapsed else 0.0)
        report = producer.flush()
    return IngestResult(report, time.perf_counter() - start)
