"""The main job on the embedded local stack. Today: services -> replay ml-100k -> counts.

Later stages (stream features, retrain, delta, hot swap, recommendations) plug in here.
"""

from __future__ import annotations

from rich.console import Console

from infra.report import topics_table
from infra.services import up
from infra.settings import Settings
from streaming.ingest import send_events
from streaming.pacing import Pacer
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.topics import scan_topic


def run_demo(settings: Settings, console: Console, speedup: float | None = None) -> int:
    console.rule("[bold]1. local stack")
    for s in up(settings):
        console.print(f"[green]✓[/] {s.describe()}")

    console.rule("[bold]2. replay MovieLens 100k in event-time order")
    already = scan_topic(settings, settings.topics.events, idle_ms=500).records
    if already:
        console.print(f"[yellow]note:[/] the events topic already holds {already:,} records from earlier runs "
                      "(`recsys down` clears the in-memory broker)")
    loaded = load_events(settings.ml100k_path)
    console.print(f"{len(loaded.events):,} events from {settings.ml100k_path}")
    with EventProducer(settings) as producer:
        result = send_events(producer, loaded.events, pacer=Pacer(speedup=speedup), description="replay")
    console.print(f"acknowledged {result.report.acked:,} events at {result.rate:,.0f} ev/s")

    console.rule("[bold]3. what the broker holds")
    console.print(topics_table(settings))
    console.print("Stop the services with [bold]recsys down[/].")
    return 0
