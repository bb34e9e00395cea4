"""The main job on the embedded local stack.

Today: services -> feature registry -> stream job -> replay ml-100k -> features in Feast/Redis
and events in Delta. Later stages (retrain, delta, hot swap, recommendations) plug in here.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from infra.report import topics_table
from infra.services import up
from infra.settings import Settings
from streaming.ingest import send_events
from streaming.pacing import Pacer
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.topics import scan_topic


def run_demo(settings: Settings, console: Console, speedup: float | None = None) -> int:
    from features.store import apply
    from streaming import stream_runner

    console.rule("[bold]1. local stack")
    for s in up(settings):
        console.print(f"[green]✓[/] {s.describe()}")

    console.rule("[bold]2. feature registry and the streaming feature job")
    views = apply(settings)
    console.print(f"[green]✓[/] feast apply: {', '.join(views)}")
    if stream_runner.status(settings, with_lag=False).running:
        console.print("stream job already running")
    else:
        with console.status("starting the PyFlink job (local mini-cluster)..."):
            pid, restored = stream_runner.start(settings)
        console.print(f"[green]✓[/] stream job pid {pid}, {'resumed from ' + str(restored) if restored else 'fresh start'}")
    try:
        return _replay_and_show(settings, console, speedup)
    finally:
        stream_runner.stop(settings)  # also on errors: never leave a job behind


def _replay_and_show(settings: Settings, console: Console, speedup: float | None) -> int:
    from features import names
    from features.store import feature_store
    from streaming import stream_runner
    from streaming.lake import read_events

    console.rule("[bold]3. replay MovieLens 100k in event-time order")
    already = scan_topic(settings, settings.topics.events, idle_ms=500).records
    if already:
        console.print(f"[yellow]note:[/] the events topic already holds {already:,} records from earlier runs "
                      "(`recsys down` clears the in-memory broker)")
    loaded = load_events(settings.ml100k_path)
    console.print(f"{len(loaded.events):,} events from {settings.ml100k_path}")
    with EventProducer(settings) as producer:
        result = send_events(producer, loaded.events, pacer=Pacer(speedup=speedup), description="replay")
    console.print(f"acknowledged {result.report.acked:,} events at {result.rate:,.0f} ev/s")

    console.rule("[bold]4. streaming features")
    with console.status("waiting for the stream job to catch up..."):
        metrics = stream_runner.wait_idle(settings, already + result.report.acked, timeout_s=600)
    lake = read_events(settings.paths.events_table, columns=["event_id"])
    console.print(f"job: {metrics.get('events_in', 0):,} records read, {metrics.get('late', 0):,} late, "
                  f"{metrics.get('dlq', 0):,} to the DLQ; Delta `events` table holds {lake.num_rows:,} rows")
    store = feature_store(settings)
    users = ["1", "42", "196"]
    rows = store.get_online_features(
        features=[f"{names.USER_STATS}:n_events", f"{names.USER_STATS}:avg_rating", f"{names.USER_RECENT}:recent_items"],
        entity_rows=[{names.USER_KEY: u} for u in users],
    ).to_dict()
    table = Table("user", "events", "avg rating", "recent items (newest first)", title="read back through Feast")
    for u, n, avg, recent in zip(rows[names.USER_KEY], rows["n_events"], rows["avg_rating"], rows["recent_items"]):
        table.add_row(u, str(n), f"{avg:.2f}" if avg is not None else "-", ", ".join((recent or [])[:8]))
    console.print(table)

    console.rule("[bold]5. what the broker holds")
    console.print(topics_table(settings))
    console.print("Stream job stopped (its checkpoint is kept: `recsys stream start` resumes). "
                  "Stop the services with [bold]recsys down[/].")
    return 0
