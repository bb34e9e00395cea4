"""``recsys``: the one command-line entry point of the engine."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

from infra.settings import Settings, load_settings

console = Console()


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.services import up

    for s in up(settings):
        console.print(f"[green]✓[/] {s.describe()}")
    console.print(f"topics ready: {settings.topics.events}, {settings.topics.dlq}  (data dir {settings.paths.root})")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from batch.learn_runner import stop as stop_learner
    from infra.services import down
    from serving.runner import stop as stop_api
    from streaming.stream_runner import stop as stop_stream

    stopped = (["learner"] if stop_learner(settings) else []) + (["API"] if stop_api(settings) else []) \
        + (["stream job"] if stop_stream(settings) else []) + down(settings)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from infra.services import status

    statuses = status(settings)
    for s in statuses:
        colour = "green" if s.ready else ("yellow" if s.running else "red")
        console.print(f"[{colour}]●[/] {s.describe()}")
    return 0 if statuses and all(s.ready for s in statuses) else 3


def _load_event_file(args: argparse.Namespace):  # noqa: ANN202 - streaming.replay.LoadedEvents
    from streaming.replay import load_events, parse_columns

    return load_events(args.path, columns=parse_columns(args.columns), delimiter=args.delimiter,
                       event_type=args.event_type, time_unit=args.time_unit)


def _event_file_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """The replay formats: u.data, or any CSV mapped with --columns."""
    help_path = "u.data (user item rating unix_ts, tab-separated) or a CSV with --columns"
    if optional:
        parser.add_argument("path", nargs="?", help=f"{help_path} (default: ml100k_path from the settings)")
    else:
        parser.add_argument("path", help=help_path)
    parser.add_argument("--columns", help="CSV header mapping, e.g. user_id=userId,item_id=movieId,value=rating,event_time=timestamp")
    parser.add_argument("--delimiter", help="field delimiter (default: tab for u.data, comma for CSV)")
    parser.add_argument("--event-type", default="rating", help="event type when no column maps it")
    parser.add_argument("--time-unit", default="s", choices=["s", "ms", "us"], help="unit of the time column")


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.ingest import send_events
    from streaming.pacing import Pacer
    from streaming.producer import EventProducer

    loaded = _load_event_file(args)
    console.print(f"loaded {len(loaded.events):,} events from {args.path} ({len(loaded.rejected)} bad rows)")
    with EventProducer(settings) as producer:
        result = send_events(
            producer,
            loaded.events,
            pacer=Pacer(args.speedup, args.max_rate),
            description="replay",
            show_progress=not args.quiet,
            rejected=(row for row, _ in loaded.rejected),
        )
    _print_report(result.report, result.rate)
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.ingest import send_events
    from streaming.pacing import Pacer
    from streaming.producer import EventProducer
    from streaming.synthetic import SyntheticEvents

    total = int(args.rate * args.duration)
    gen = SyntheticEvents(
        n_users=args.users,
        n_items=args.items,
        zipf_exponent=args.zipf,
        malformed=args.malformed,
        seed=args.seed,
        max_event_bytes=settings.producer.max_event_bytes,
    )
    events = gen.batch(total, start_ms=int(time.time() * 1000), step_ms=1000.0 / args.rate)
    with EventProducer(settings) as producer:
        result = send_events(producer, events, pacer=Pacer(max_rate=args.rate), description="produce", show_progress=not args.quiet)
    _print_report(result.report, result.rate)
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.report import topics_table

    console.print(topics_table(settings))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    return run_demo(settings, console, speedup=args.speedup, holdout_days=args.holdout_days, screenshot=args.screenshot,
                    online_every_s=args.online_every_s)


def cmd_features(settings: Settings, args: argparse.Namespace) -> int:
    from features import store

    if args.action == "apply":
        views = store.apply(settings)
        console.print(f"[green]✓[/] applied {len(views)} feature views to {store.env_for(settings)['RECSYS_FEAST_REGISTRY_PATH']}: {', '.join(views)}")
    elif args.action == "env":
        sys.stdout.write(store.shell_exports(settings))
    else:
        from rich.table import Table

        table = Table()
        for column in ("view", "feature", "entity", "type", "source", "ttl"):
            table.add_column(column, no_wrap=column in ("view", "feature", "type"), overflow="fold")
        for row in store.describe(settings):
            table.add_row(row.view, row.feature, row.entity, row.dtype, row.source, row.ttl)
        console.print(table)
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from batch.backfill import compute, write_offline, write_online

    every_ms = int(args.snapshot_every_s * 1000) if args.snapshot_every_s is not None else None
    result = compute(settings, version=args.version, progress=not args.quiet, snapshot_every_ms=every_ms)
    console.print(f"backfilled {result.events:,} events from events table v{result.table_version} "
                  f"({result.late_skipped:,} late ones excluded): {len(result.users):,} users, {len(result.items):,} items")
    if args.online:
        console.print(f"online store: wrote {write_online(settings, result):,} rows")
    if args.offline:
        write_offline(settings, result.snapshot_frames() if every_ms is not None else result.frames(settings))
        console.print(f"offline snapshots appended under {settings.paths.lake_dir / 'features'}")
    return 0


def cmd_lake(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.lake import compact

    result = compact(settings.paths.events_table, retention_hours=args.retention_hours)
    opt = result["optimize"]
    console.print(f"events table v{result['version']}: compacted {opt.get('numFilesRemoved', 0)} files into "
                  f"{opt.get('numFilesAdded', 0)}, vacuumed {result['vacuumed_files']} unreferenced files")
    return 0


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from batch import retrain

    if args.nproc:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update={"nproc": args.nproc})})
    result = retrain.run(settings, version=args.version, progress=not args.quiet, promote=not args.no_promote, console=console)
    console.print(f"report: {result.report_dir / 'report.json'} and report.png")
    return 0 if result.promoted or args.no_promote else 4


def cmd_learn(settings: Settings, args: argparse.Namespace) -> int:
    from batch import learn

    o = settings.online
    update = {k: v for k, v in (("publish_every_s", args.every_s), ("publish_every_events", args.every_events)) if v}
    if update:
        settings = settings.model_copy(update={"online": o.model_copy(update=update)})
    o = settings.online
    if args.action != "run":
        return _learn_service(settings, args.action)
    console.print(f"[bold]learn[/]: training the served model on {settings.topics.events}; a delta every "
                  f"{o.publish_every_s:g} s or {o.publish_every_events:,} events (Ctrl-C stops after publishing)")

    def published(r) -> None:  # noqa: ANN001 - batch.online_learner.PublishResult
        rows = ", ".join(f"{k.split('.')[-2]} {n}" for k, n in r.rows_changed.items() if n) or "no rows"
        console.print(f"[green]{r.version}[/]: {r.events:,} events, {r.examples:,} examples, changed rows: {rows} "
                      f"({r.ms:.0f} ms)")

    report = learn.run(settings, idle_exit_s=args.idle_exit_s, max_events=args.max_events, on_publish=published)
    console.print(f"consumed {report.consumed:,}, trained {report.trained:,}, invalid skipped {report.skipped_invalid:,}, "
                  f"late skipped {report.skipped_late:,}, "
                  f"{len(report.published)} versions published, {report.rebases} rebases onto a newer served version")
    return 0


def _learn_service(settings: Settings, action: str) -> int:
    from batch import learn_runner

    log = settings.paths.log_dir / "learn.log"
    if action == "start":
        pid = learn_runner.start(settings)
        console.print(f"[green]✓[/] learner running (pid {pid}); log {log}; `recsys learn stop` publishes and stops it")
        return 0
    if action == "stop":
        console.print("learner stopped (what it trained is published)" if learn_runner.stop(settings)
                      else "learner was not running")
        return 0
    pid, status = learn_runner.running_pid(settings), learn_runner.read_status(settings)
    if pid is None:
        console.print("[red]●[/] learner: stopped" + (f" (last version {status['version']})" if status else ""))
        return 3
    console.print(f"[green]●[/] learner: running (pid {pid}), from {status['version'] if status else '?'}; "
                  f"{status['published'] if status else 0} versions published; offsets {status['offsets'] if status else {}}; "
                  f"late skipped {status.get('late_skipped', 0) if status else 0:,}")
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from batch.prequential import Prequential
    from batch.prequential_report import DAY_MS, write_report
    from features.model_inputs import feature_spec
    from features.store import apply

    args.path = args.path or settings.ml100k_path
    loaded = _load_event_file(args)
    events = loaded.events
    if not events:
        raise ValueError(f"{args.path} has no valid events ({len(loaded.rejected)} bad rows): check --columns/--time-unit")
    if args.baselines is not None:
        chosen = [b for b in args.baselines.split(",") if b and b != "none"]
        settings = settings.model_copy(update={"evaluation": settings.evaluation.model_validate(
            {**settings.evaluation.model_dump(), "baselines": chosen})})
    if args.skip_last_days:
        end = events[-1].event_time - int(args.skip_last_days * DAY_MS)
        events = [e for e in events if e.event_time < end]
        if not events:
            raise ValueError(f"--skip-last-days {args.skip_last_days:g} leaves no events: the file spans less than that")
    start = events[-1].event_time - int(args.eval_days * DAY_MS)
    scenario = {}
    if args.renew_items:
        from batch.catalogue_churn import renew_items

        events = renew_items(events, start, int(args.renew_every_days * DAY_MS), args.renew_items)
        scenario = {"renew_items": args.renew_items, "renew_every_days": args.renew_every_days}
    if args.skip_last_days:
        scenario["skip_last_days"] = args.skip_last_days
    with tempfile.TemporaryDirectory(prefix="recsys-evaluate-") as tmp:
        # the feature definitions as the registry defines them, in a scratch registry (no services needed)
        scratch = settings.model_copy(update={"data_dir": Path(tmp)})
        apply(scratch)
        spec = feature_spec(scratch)
    window = (f"the {args.eval_days:g} days before the last {args.skip_last_days:g} (a validation window)"
              if args.skip_last_days else f"the last {args.eval_days:g} days")
    console.print(f"[bold]evaluate[/]: {len(events):,} events from {args.path}; {window} are replayed "
                  f"prequentially (recommend, then learn), retraining every {args.retrain_every_days:g} days; "
                  f"baselines: {', '.join(settings.evaluation.baselines) or 'none'}")
    if args.renew_items:
        console.print(f"  catalogue churn: {args.renew_items:.0%} of items relaunched under a new id every "
                      f"{args.renew_every_days:g} days of the evaluated period")
    report = Prequential(settings, spec, k=args.k, retrain_every_days=args.retrain_every_days,
                         progress=not args.quiet).run(events, start)
    report.scenario = scenario
    json_path, png_path = write_report(report, Path(args.out) if args.out else settings.paths.reports_dir)
    console.print(report.table())
    for pair, d in report.differences.items():
        console.print(f"  {pair.replace('_vs_', ' - '):<21} NDCG@{report.k} {d['mean']:+.4f} "
                      f"(95% interval {d['low']:+.4f} .. {d['high']:+.4f}; ahead on {d['a_ahead']:.0%} vs {d['b_ahead']:.0%} of events)")
    console.print(f"report: {json_path} and {png_path}")
    return 0


def cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    import logging
    import subprocess

    from infra.schedule import next_run, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from datetime import datetime, timezone

    cfg = settings.schedule
    console.print(f"nightly retrain daily at {cfg.daily_at} {cfg.timezone}; next run "
                  f"{next_run(cfg, datetime.now(timezone.utc)).isoformat()} (Ctrl-C stops)")

    def job() -> int:  # a subprocess: a crash or leak in one run cannot take the scheduler down
        return subprocess.run([sys.executable, "-m", "infra.cli", "retrain", "--quiet"]).returncode

    run_forever(settings, job)
    return 0


def cmd_model(settings: Settings, args: argparse.Namespace) -> int:
    from rich.table import Table

    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.paths.models_dir)
    if args.action == "rollback":
        was = registry.served()
        console.print(f"serving {registry.rollback()} again (rolled back from {was})")
        return 0
    if args.action == "verify":
        versions = [args.version] if args.version else registry.versions()
        for v in versions:
            files = registry.verify(v)["files"]
            console.print(f"{v}: {len(files)} files match their checksums")
        return 0
    if args.action == "show":
        version = args.version or registry.served()
        if not version:
            raise ValueError("no model is served yet: run `recsys retrain` first")
        console.print_json(data=registry.meta(version))
        return 0
    served = registry.served()
    table = Table("version", "served", "created", "events v", "AUC", "HR@K", "NDCG@K", "pop HR@K", "base")
    for v in registry.versions():
        m = registry.meta(v)
        met, pop = m.get("metrics", {}), m.get("popularity", {})
        table.add_row(v, "*" if v == served else "", m.get("created_at", "")[:19], str(m.get("table_version")),
                      f"{met.get('auc', float('nan')):.4f}", f"{met.get('hr_at_k', float('nan')):.4f}",
                      f"{met.get('ndcg_at_k', float('nan')):.4f}", f"{pop.get('hr_at_k', float('nan')):.4f}", m.get("base_version") or "")
    console.print(table)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving import runner

    if args.host or args.port:
        update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update=update)})
    url = runner.base_url(settings)
    if args.action == "run":
        console.print(f"serving on {url} (dashboard {url}/ui, API docs {url}/docs); Ctrl-C stops")
        runner.run(settings)
        return 0
    if args.action == "start":
        st = runner.start(settings)
        console.print(f"[green]✓[/] API running (pid {st.pid}) on {url}; dashboard {url}/ui; "
                      f"log {settings.paths.log_dir / 'api.log'}")
        return 0
    if args.action == "stop":
        console.print("API stopped" if runner.stop(settings) else "API was not running")
        return 0
    pid = runner.running_pid(settings)
    if pid is None:
        console.print(f"[red]●[/] API: stopped ({url})")
        return 3
    import httpx

    try:
        ready = httpx.get(url + "/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError) as e:
        console.print(f"[yellow]●[/] API: process {pid} alive but {url} does not answer ({e})")
        return 3
    colour = "green" if ready["ready"] else "yellow"
    console.print(f"[{colour}]●[/] API: running (pid {pid}) on {url}; model {ready['model_version'] or 'none'}"
                  + ("" if ready["ready"] else f"; not ready: {'; '.join(ready['problems'])}"))
    return 0 if ready["ready"] else 3


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    from streaming import stream_runner

    if args.action == "start":
        if args.foreground:
            from streaming.feature_job import main as job_main

            restore = None if args.fresh else stream_runner.latest_checkpoint(settings)
            return job_main(["--restore", str(restore)] if restore else [])
        current = stream_runner.status(settings, with_lag=False)
        if current.running:
            console.print(f"stream job already running (pid {current.pid}); `recsys stream stop` first to restart it")
            return 0
        pid, restored = stream_runner.start(settings, fresh=args.fresh)
        where = f"resumed from {restored}" if restored else "fresh start (no checkpoint)"
        console.print(f"[green]✓[/] stream job running (pid {pid}), {where}; log {settings.paths.log_dir / 'stream.log'}")
        return 0
    if args.action == "stop":
        stopped = stream_runner.stop(settings, kill=args.kill)
        console.print("stream job stopped" if stopped else "stream job was not running")
        return 0
    st = stream_runner.status(settings)
    colour = "green" if st.running else "red"
    console.print(f"[{colour}]●[/] stream job: {'running (pid %d)' % st.pid if st.running else 'stopped'}; "
                  f"latest checkpoint: {st.latest_checkpoint or 'none'}")
    m = st.metrics
    if m:
        console.print(
            f"  events in {m.get('events_in', 0):,} | late {m.get('late', 0):,} | DLQ {m.get('dlq', 0):,} | "
            f"lake rows {m.get('lake_rows', 0):,} in {m.get('lake_commits', 0):,} commits | "
            f"online rows {m.get('online_rows', 0):,} in {m.get('online_batches', 0):,} batches"
        )
        if m.get("updated_at"):
            console.print(f"  last activity {time.time() - m['updated_at']:.1f}s ago")
    if st.lag:
        console.print(f"  lag (records not yet read): {sum(st.lag.values()):,} {dict(sorted(st.lag.items()))}")
    return 0 if st.running else 3


def _print_report(report, rate: float) -> None:  # type: ignore[no-untyped-def]
    console.print(
        f"sent {report.sent:,} (acked {report.acked:,}) at {rate:,.0f} ev/s; "
        f"dead-lettered {report.rejected:,} {dict(report.reasons) if report.reasons else ''}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (default: $RECSYS_CONFIG or ./recsys.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="install if missing and start the local broker + Redis, create topics")
    sub.add_parser("down", help="stop the local services by PID")
    sub.add_parser("status", help="show which services run and answer (exit 3 if any does not)")
    sub.add_parser("topics", help="count records in the events and DLQ topics, DLQ reasons")

    replay = sub.add_parser("replay", help="replay an interaction file in event-time order")
    _event_file_arguments(replay)
    replay.add_argument("--speedup", type=float, help="event-time speed-up factor (e.g. 86400: a day per second)")
    replay.add_argument("--max-rate", type=float, help="cap in events/s")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    produce = sub.add_parser("produce", help="generate synthetic Zipf events for load tests")
    produce.add_argument("--rate", type=float, default=1000.0, help="events/s")
    produce.add_argument("--duration", type=float, default=10.0, help="seconds")
    produce.add_argument("--users", type=int, default=10_000)
    produce.add_argument("--items", type=int, default=5_000)
    produce.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of user/item popularity")
    produce.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed events (go to the DLQ)")
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--quiet", action="store_true")

    demo = sub.add_parser("demo", help="the main job end to end on the local stack")
    demo.add_argument("--speedup", type=float, default=None, help="event-time speed-up for the replay (default: as fast as possible)")
    demo.add_argument("--holdout-days", type=int, default=1, help="the last N days are replayed after the first retrain and checked against it")
    demo.add_argument("--online-every-s", type=float, default=10.0,
                      help="the online learner publishes a delta this often while the held-out day plays")
    demo.add_argument("--screenshot", type=Path, help="save a headless-Chromium screenshot of the dashboard here at the end")

    features = sub.add_parser("features", help="the Feast feature registry")
    features.add_argument("action", choices=["apply", "list", "env"],
                          help="apply: register entities/views; list: name, entity, type, source, TTL; env: exports for the feast CLI")

    backfill = sub.add_parser("backfill", help="recompute the streaming features from the Delta events table")
    backfill.add_argument("--version", type=int, help="events table version (default: latest)")
    backfill.add_argument("--online", action="store_true", help="also write the values to the online store")
    backfill.add_argument("--offline", action="store_true", help="also write the offline tables Feast joins for training")
    backfill.add_argument("--snapshot-every-s", type=float,
                          help="offline: keep each entity's history, one row per this much event time (point-in-time joins)")
    backfill.add_argument("--quiet", action="store_true")

    stream = sub.add_parser("stream", help="the PyFlink feature job (local mini-cluster or a session cluster)")
    stream.add_argument("action", choices=["start", "stop", "status"])
    stream.add_argument("--fresh", action="store_true", help="start: ignore retained checkpoints")
    stream.add_argument("--foreground", action="store_true", help="start: run in this terminal (Ctrl-C stops)")
    stream.add_argument("--kill", action="store_true", help="stop: SIGKILL instead of a graceful stop")

    retrain = sub.add_parser("retrain", help="the nightly job: Delta -> point-in-time data -> TorchRec -> evaluated version + delta")
    retrain.add_argument("--version", type=int, help="events table version to train on (default: latest; recorded in the model)")
    retrain.add_argument("--nproc", type=int, help="training processes (torchrun + gloo DistributedModelParallel); default training.nproc")
    retrain.add_argument("--no-promote", action="store_true", help="publish the version but do not serve it")
    retrain.add_argument("--quiet", action="store_true")

    learn = sub.add_parser("learn", help="the streaming trainer: train the served model on new events, publish minute-level deltas")
    learn.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"],
                       help="run in the foreground (default), or start|stop|status in the background")
    learn.add_argument("--every-s", type=float, help="publish at most this often (default online.publish_every_s)")
    learn.add_argument("--every-events", type=int, help="... or after this many events (default online.publish_every_events)")
    learn.add_argument("--idle-exit-s", type=float, help="stop after this many seconds without a new event (default: run until Ctrl-C)")
    learn.add_argument("--max-events", type=int, help="stop after training this many events")

    evaluate = sub.add_parser("evaluate", help="prequential replay: the engine (static, daily, daily+online) vs popularity, item-kNN, EASE, SASRec: HR/NDCG over time")
    _event_file_arguments(evaluate, optional=True)
    evaluate.add_argument("--eval-days", type=float, default=14.0, help="the last N days are evaluated (before: history)")
    evaluate.add_argument("--retrain-every-days", type=float, default=1.0, help="the daily strategy's retrain period")
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--renew-items", type=float, default=0.0, metavar="FRACTION",
                          help="catalogue churn: relaunch this fraction of items under a new id every --renew-every-days "
                               "of the evaluated period (batch.catalogue_churn; default 0: the file as it is)")
    evaluate.add_argument("--renew-every-days", type=float, default=1.0)
    evaluate.add_argument("--skip-last-days", type=float, default=0.0, metavar="DAYS",
                          help="drop the file's last DAYS first: --skip-last-days 14 evaluates a validation window "
                               "before the default one (tune there, report on the default window once)")
    evaluate.add_argument("--baselines", default=None, metavar="LIST",
                          help="comma-separated yardsticks to run beside the engine (item_knn,ease,sasrec; 'none'); "
                               "default: evaluation.baselines")
    evaluate.add_argument("--out", default=None, help="directory for prequential.json and prequential.png "
                          "(default <data_dir>/reports, where the dashboard reads it)")
    evaluate.add_argument("--quiet", action="store_true")

    serve = sub.add_parser("serve", help="the recommendation API: run in the foreground, or start|stop|status in the background")
    serve.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"])
    serve.add_argument("--host", help="default serving.host")
    serve.add_argument("--port", type=int, help="default serving.port")

    sub.add_parser("schedule", help="run `recsys retrain` daily at schedule.daily_at (local scheduler; see infra/production for cron/K8s/Airflow)")

    model = sub.add_parser("model", help="the model registry: list, show, verify, rollback")
    model.add_argument("action", choices=["list", "show", "verify", "rollback"])
    model.add_argument("version", nargs="?", help="show/verify: a version (default: the served one / all versions)")

    lake = sub.add_parser("lake", help="lakehouse maintenance")
    lake.add_argument("action", choices=["compact"], help="compact: optimize (merge small files) + vacuum")
    lake.add_argument("--retention-hours", type=int, default=168, help="vacuum keeps files newer than this")
    return parser


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "topics": cmd_topics,
    "replay": cmd_replay,
    "produce": cmd_produce,
    "demo": cmd_demo,
    "features": cmd_features,
    "backfill": cmd_backfill,
    "lake": cmd_lake,
    "stream": cmd_stream,
    "serve": cmd_serve,
    "retrain": cmd_retrain,
    "learn": cmd_learn,
    "evaluate": cmd_evaluate,
    "schedule": cmd_schedule,
    "model": cmd_model,
}


def quiet_third_party_noise() -> None:
    """Import-time deprecation chatter of fbgemm/torchrec/torch.fx says nothing a user can act on."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchrec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_noise()
    args = build_parser().parse_args(argv)
    if args.config:
        import os

        os.environ["RECSYS_CONFIG"] = args.config
    try:
        settings = load_settings()
        return COMMANDS[args.command](settings, args)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except (ConnectionError, RuntimeError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
