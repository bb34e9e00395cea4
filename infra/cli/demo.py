"""The main job on the embedded local stack, end to end.

services -> feature registry -> stream job -> replay ml-100k up to the last day boundary ->
nightly retrain (v1) -> recommendation API -> held-out check vs popularity -> the online learner
starts -> the last day through the live system (fresh features, minute-level deltas hot-swapped)
-> nightly retrain (new version + delta; the learner rebases onto it) -> hot swap ->
recommendations + summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from infra.cli.report import topics_table
from infra.services import up
from infra.settings import Settings
from streaming.events import DAY_MS, Event
from streaming.ingest import send_events
from streaming.pacing import Pacer
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.topics import scan_topic

SHOW_USERS = ("1", "42", "196")


def split_at_day_boundary(events: list[Event], holdout_days: int = 1) -> tuple[list[Event], list[Event], int]:
    """Events before the start (UTC midnight) of the last ``holdout_days`` days, the rest, and that boundary."""
    boundary = (events[-1].event_time // DAY_MS - (holdout_days - 1)) * DAY_MS
    cut = next(i for i, e in enumerate(events) if e.event_time >= boundary)
    return events[:cut], events[cut:], boundary


def run_demo(settings: Settings, console: Console, speedup: float | None = None, holdout_days: int = 1,
             screenshot: Path | None = None, online_every_s: float = 10.0) -> int:
    from batch.online import learn_runner
    from features.store import apply
    from serving import runner
    from streaming.job import attribution_runner, stream_runner

    started = time.monotonic()
    console.rule("[bold]1. local stack")
    for s in up(settings):
        console.print(f"[green]✓[/] {s.describe()}")

    console.rule("[bold]2. feature registry and the streaming feature job")
    views = apply(settings)
    console.print(f"[green]✓[/] feast apply: {', '.join(views)}")
    items_file = Path(settings.ml100k_path).with_name("u.item")
    if items_file.is_file():
        from batch.catalogue import load_catalogue, read_catalogue

        n = load_catalogue(settings, read_catalogue(items_file))
        console.print(f"[green]✓[/] catalogue: {n:,} titles and genres from {items_file.name} (`recsys catalogue load`)")
    if stream_runner.status(settings, with_lag=False).running:
        console.print("stream job already running")
    else:
        with console.status("starting the PyFlink job (local mini-cluster)..."):
            pid, restored = stream_runner.start(settings)
        console.print(f"[green]✓[/] stream job pid {pid}, {'resumed from ' + str(restored) if restored else 'fresh start'}")
    try:
        code = _pipeline(settings, console, speedup, holdout_days, started, online_every_s)
        if screenshot is not None:
            from infra import chromium

            shot = chromium.screenshot(runner.base_url(settings) + "/ui", screenshot)
            console.print(f"dashboard screenshot: {shot}")
        return code
    finally:
        learn_runner.stop(settings)  # also on errors: never leave a job behind
        attribution_runner.stop(settings)
        stream_runner.stop(settings)
        if runner.running_pid(settings) is not None:
            url = runner.base_url(settings)
            console.print(f"The API keeps serving on {url} (dashboard [bold]{url}/ui[/]); "
                          "[bold]recsys down[/] stops it and the services.")


def _replay(settings: Settings, console: Console, events: list[Event], speedup: float | None, label: str) -> int:
    already = scan_topic(settings, settings.topics.events, idle_ms=500).records
    with EventProducer(settings) as producer:
        result = send_events(producer, events, pacer=Pacer(speedup=speedup), description=label)
    console.print(f"acknowledged {result.report.acked:,} events at {result.rate:,.0f} ev/s")
    _caught_up(settings, console, already + result.report.acked)
    return result.report.acked


def _caught_up(settings: Settings, console: Console, expected: int) -> None:
    from streaming.job import stream_runner

    with console.status("waiting for the stream job to catch up..."):
        metrics = stream_runner.wait_idle(settings, expected, timeout_s=600)
    console.print(f"stream job: {metrics.get('events_in', 0):,} records read, {metrics.get('late', 0):,} late, "
                  f"{metrics.get('dlq', 0):,} to the DLQ")


def _prequential_replay(settings: Settings, console: Console, url: str, history: list[Event], held_out: list[Event]):  # noqa: ANN202 - batch.evaluate.holdout.PrequentialResult
    """The held-out events through the live system a minute at a time (batch.evaluate.holdout.prequential)."""
    from batch.evaluate import holdout

    already = scan_topic(settings, settings.topics.events, idle_ms=500).records
    with EventProducer(settings) as producer, console.status("recommend, send, wait for the features ...") as status:
        sent = [0]

        def send(group: list[Event]) -> None:
            for e in group:
                producer.send(e)
            producer.flush()
            sent[0] += len(group)
            status.update(f"recommend, send, wait for the features ... {sent[0]:,}/{len(held_out):,} events")

        result = holdout.prequential(url, settings, history, held_out, send)
    console.print(f"sent {sent[0]:,} events in one-minute groups")
    _caught_up(settings, console, already + len(held_out))  # the lake holds them before the retrain
    return result


def _retrain(settings: Settings, console: Console, title: str):  # noqa: ANN202 - batch.nightly.retrain.RetrainResult
    from batch.nightly import retrain

    console.rule(f"[bold]{title}")
    result = retrain.run(settings, progress=True, console=console)
    delta = f", delta from {result.served_version}: {sum(result.delta_rows.values()):,} changed rows" if result.delta_rows else ""
    console.print(f"[green]✓[/] {result.version} published{delta}; {'promoted' if result.promoted else 'not promoted'}")
    return result


def _show(settings: Settings, console: Console, url: str, title: str) -> None:
    table = Table("user", "recent items (newest first)", "top 10 (score, sources)", title=title)
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in SHOW_USERS:
            r = client.get(f"/recommendations/{user}", params={"k": 10, "details": True}).json()
            top = ", ".join(f"{_name(i)} ({i['score']:.2f}, {'+'.join(s[:3] for s in i['sources'])})" for i in r["items"])
            table.add_row(user, ", ".join(r["recent_items"][:6]), top)
        version = client.get("/model").json()["served"]["version"]
    table.caption = f"served model {version}"
    console.print(table)


def _name(item: dict) -> str:
    """An item as people read it: its title (short), else its id."""
    title = item.get("title")
    return item["item_id"] if not title else (title if len(title) <= 24 else title[:23] + "…")


def _wait_for_version(url: str, version: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model = httpx.get(url + "/model", timeout=10).json()
        if (model["served"] or {}).get("version") == version or version in model["rejected"]:
            return model
        time.sleep(0.2)
    raise TimeoutError(f"the API did not pick up {version} within {timeout_s}s: see {url}/model")


def _latency(url: str, users: list[str], n: int = 300) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            t = time.perf_counter()
            client.get(f"/recommendations/{users[i % len(users)]}", params={"k": 10}).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def _start_attribution(settings: Settings, console: Console) -> None:
    from streaming.job import attribution_runner

    with console.status("starting the live attribution job (PyFlink: impressions joined with the events after them)..."):
        pid, restored = attribution_runner.start(settings)
    window = settings.attribution.window_s / 60
    console.print(f"[green]✓[/] attribution job pid {pid}, {'resumed from ' + str(restored) if restored else 'fresh start'}: "
                  f"every list the API serves is joined with the user's events in the next {window:g} minutes")


def _live_attribution(settings: Settings, console: Console, url: str) -> None:
    """Live CTR and hit rate per served version, as the attribution job counted them in Redis."""
    from streaming.attribution_counts import AttributionCounts
    from streaming.job import attribution_runner

    sent = _impressions_sent(url)
    with console.status("waiting for the attribution job to count every served list..."):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and attribution_runner.status(settings).metrics.get("impressions_in", 0) < sent:
            time.sleep(0.25)
        time.sleep(max(1.0, 3 * settings.attribution.batch_ms / 1000))  # the last micro-batch's counts land
    totals = AttributionCounts.for_settings(settings).all()
    table = Table("model version", "arm", "lists", "hit rate", "CTR", "users",
                  title=f"live attribution: lists served and engaged within {settings.attribution.window_s / 60:g} min (Redis)")
    for t in totals:
        table.add_row(t.version, t.arm, f"{t.lists:,}", f"{t.hits / t.lists:.3f}" if t.lists else "-",
                      f"{t.engaged / t.shown:.3f}" if t.shown else "-", f"{t.users:,}")
    console.print(table)
    lists = sum(t.lists for t in totals)
    console.print(f"live attribution: {lists:,} of {int(sent):,} served lists counted, "
                  f"{sum(t.hits for t in totals):,} with an engaged item")


def _impressions_sent(url: str) -> float:
    import re

    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(r'recsys_impressions_total\{outcome="sent"\} ([0-9.e+]+)', text)
    return float(found[1]) if found else 0.0


def _start_learner(settings: Settings, console: Console, every_s: float) -> None:
    from batch.online import learn_runner

    learning = settings.model_copy(update={"online": settings.online.model_copy(update={"publish_every_s": every_s})})
    with console.status("starting the online learner (folds the lake the served model was trained on)..."):
        pid = learn_runner.start(learning)
    status = learn_runner.read_status(settings) or {}
    console.print(f"[green]✓[/] online learner pid {pid} on top of {status.get('started_from')}: trains every new event, "
                  f"publishes a delta every {every_s:g} s that the API hot-swaps")


def _wait_for_rebase(settings: Settings, version: str, timeout_s: float = 120) -> dict:
    """The learner notices a newly served nightly version and restarts its training on top of it."""
    from batch.online import learn_runner

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = learn_runner.read_status(settings) or {}
        if status.get("started_from") == version:
            return status
        time.sleep(0.2)
    raise TimeoutError(f"the online learner did not rebase onto {version} within {timeout_s}s: see "
                       f"{settings.paths.log_dir / 'learn.log'}")


def _versions_line(swaps: list[dict]) -> str:
    """The swaps the API made, the online run in the middle folded: 'v0001 (full), v0002..v0011
    (10 x delta), v0012 (delta)'."""
    shown = [f"{e['version']} ({e['outcome']})" for e in swaps]
    if len(swaps) <= 4:
        return ", ".join(shown)
    middle = swaps[1:-1]
    outcomes = sorted({e["outcome"] for e in middle})
    return f"{shown[0]}, {middle[0]['version']}..{middle[-1]['version']} ({len(middle)} x {'/'.join(outcomes)}), {shown[-1]}"


def _pipeline(settings: Settings, console: Console, speedup: float | None, holdout_days: int, started: float,
              online_every_s: float) -> int:
    from batch.online import learn_runner
    from batch.evaluate import holdout
    from serving import runner
    from streaming.lake import read_events

    loaded = load_events(settings.ml100k_path)
    history, last_days, boundary = split_at_day_boundary(loaded.events, holdout_days)
    day = time.strftime("%Y-%m-%d", time.gmtime(boundary / 1000))
    console.rule(f"[bold]3. replay MovieLens 100k up to {day} (event-time order)")
    console.print(f"{len(loaded.events):,} events from {settings.ml100k_path}; {len(history):,} before {day}, "
                  f"{len(last_days):,} from then on (held out)")
    sent = _replay(settings, console, history, speedup, "replay")

    first = _retrain(settings, console, f"4. nightly retrain at the day boundary {day}")

    console.rule("[bold]5. recommendation API")
    status = runner.start(settings)
    url = runner.base_url(settings)
    _wait_for_version(url, first.version)
    console.print(f"[green]✓[/] API pid {status.pid} on {url} serving {first.version} (docs {url}/docs, dashboard {url}/ui)")
    _show(settings, console, url, f"recommendations at {day} 00:00")
    check = holdout.evaluate(url, settings, history, last_days, k=10)
    console.print(f"[bold]{check.describe()}[/]")

    _start_attribution(settings, console)

    console.rule(f"[bold]6. the held-out day arrives: {len(last_days):,} events, recommend before each minute, then send it")
    _start_learner(settings, console, online_every_s)
    per_event = _prequential_replay(settings, console, url, history, last_days)
    console.print(f"[bold]{per_event.describe()}[/]")
    holdout.write_report(settings.paths.holdout_report, day, check, per_event)
    _live_attribution(settings, console, url)
    online = learn_runner.read_status(settings) or {}
    console.print(f"online learner: {online.get('published', 0)} versions published while the day played "
                  f"({online.get('events_published', 0):,} events trained into them)")
    sent += len(last_days)
    second = _retrain(settings, console, "7. next nightly retrain: new version + delta")
    model = _wait_for_version(url, second.version)
    if second.promoted:
        _wait_for_rebase(settings, second.version)
        console.print(f"[green]✓[/] online learner rebased onto {second.version}: it trains on top of the nightly model now")
    served = model["served"]
    if served and served["version"] == second.version:
        how = f"merged {', '.join(served['applied_deltas'])}" if served["loaded_from"] == "delta" else "loaded the full version"
        console.print(f"[green]✓[/] hot swap to {second.version}: {how} in {served['load_ms']:.0f} ms, no restart")
    else:
        console.print(f"[red]✗[/] {second.version} was rejected: {model['rejected'].get(second.version)}")
    _show(settings, console, url, "recommendations after the last day")

    console.rule("[bold]8. summary")
    p50, p99 = _latency(url, [e.user_id for e in last_days] + list(SHOW_USERS))
    lake = read_events(settings.paths.events_table, columns=["event_id"])
    summary = Table("", "")
    summary.add_row("events replayed", f"{sent:,}")
    summary.add_row("Delta `events` rows", f"{lake.num_rows:,}")
    summary.add_row("model versions", _versions_line(model["swaps"]))
    summary.add_row("online learner", f"{online.get('published', 0)} minute-level versions during the held-out day, "
                    f"then rebased onto {second.version}" if second.promoted else "kept training on its own versions")
    summary.add_row(f"HR@{check.k} held-out ({check.users} users)", f"API {check.hr_api:.3f} vs item-kNN {check.hr_item_knn:.3f} vs popularity {check.hr_popularity:.3f}")
    summary.add_row(f"HR@{per_event.k} per held-out event ({per_event.events})",
                    f"API {per_event.hr_api:.3f} vs item-kNN {per_event.hr_item_knn:.3f} vs popularity "
                    f"{per_event.hr_popularity:.3f}")
    summary.add_row("model metrics (last retrain)", f"AUC {second.metrics['auc']:.3f}, HR@10 {second.metrics['hr_at_k']:.3f} "
                    f"(popularity {second.popularity['hr_at_k']:.3f})")
    summary.add_row("/recommendations latency", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (sequential, {url})")
    summary.add_row("wall time", f"{time.monotonic() - started:.0f} s")
    console.print(summary)
    console.print(topics_table(settings))
    console.print("Stream job and online learner stopped (their positions are kept: `recsys stream start` and "
                  "`recsys learn start` resume).")
    return 0
