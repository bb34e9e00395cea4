"""`recsys` commands for features: the Feast registry, the stream job, the backfill, lake maintenance."""

from __future__ import annotations

import argparse
import sys
import time

from infra.cli.console import console
from infra.settings import Settings


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
    from batch.feature_history import FeatureHistory

    every_ms = int(args.snapshot_every_s * 1000) if args.snapshot_every_s is not None else None
    history = FeatureHistory(settings, every_ms) if every_ms is not None else None
    try:
        result = compute(settings, version=args.version, progress=not args.quiet, history=history)
    except BaseException:
        if history is not None:
            history.discard()
        raise
    console.print(f"backfilled {result.events:,} events from events table v{result.table_version} "
                  f"({result.late_skipped:,} late ones excluded): {len(result.users):,} users, {len(result.items):,} items")
    if args.online:
        console.print(f"online store: wrote {write_online(settings, result):,} rows")
    if history is not None and not args.offline:
        history.discard()
    if args.offline:
        if history is not None:
            history.publish()
        else:
            write_offline(settings, result.frames(settings))
        console.print(f"offline snapshots replaced under {settings.paths.lake_dir / 'features'}")
    return 0


def cmd_lake(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.lake import compact

    result = compact(settings.paths.events_table, retention_hours=args.retention_hours)
    opt = result["optimize"]
    console.print(f"events table v{result['version']}: compacted {opt.get('numFilesRemoved', 0)} files into "
                  f"{opt.get('numFilesAdded', 0)}, vacuumed {result['vacuumed_files']} unreferenced files")
    return 0


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.job import stream_runner

    if args.action == "start":
        if args.foreground:
            from streaming.job.feature_job import main as job_main

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


def cmd_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    from batch.catalogue import catalogue_columns, load_catalogue, loaded_catalogue, read_catalogue, shown_categories
    from features import store

    if args.action == "load":
        if not args.target:
            raise ValueError("say which file: `recsys catalogue load ../shared/data/ml-100k/u.item`")
        catalogue = read_catalogue(args.target[0], catalogue_columns(args.columns), args.delimiter, progress=not args.quiet)
        store.apply(settings)  # the registry gets the item_attributes view if it lacks it
        n = load_catalogue(settings, catalogue)
        bad = f"; {len(catalogue.rejected):,} rows without an item id skipped (first: line {catalogue.rejected[0][0]}: " \
              f"{catalogue.rejected[0][1]})" if catalogue.rejected else ""
        console.print(f"[green]✓[/] {n:,} items' titles and categories loaded into the feature store{bad}")
        return 0
    frame = loaded_catalogue(settings)
    if frame is None:
        raise ValueError("no catalogue loaded yet: `recsys catalogue load <file>` (e.g. ../shared/data/ml-100k/u.item)")
    shown = frame[frame["item_id"].isin(args.target)] if args.target else frame.head(10)
    from rich.table import Table

    table = Table(title=f"{len(frame):,} items in the catalogue")
    for column in ("item", "title", "category", "attributes"):
        table.add_column(column, overflow="fold")
    for row in shown.itertuples(index=False):
        table.add_row(row.item_id, row.title or "", shown_categories(row.category), row.attributes or "")
    console.print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    features = sub.add_parser("features", help="the Feast feature registry")
    features.add_argument("action", choices=["apply", "list", "env"],
                          help="apply: register entities/views; list: name, entity, type, source, TTL; env: exports for the feast CLI")
    features.set_defaults(run=cmd_features)
    catalogue = sub.add_parser("catalogue", help="item metadata (titles, categories): load a file into the feature store, show items")
    catalogue.add_argument("action", choices=["load", "show"])
    catalogue.add_argument("target", nargs="*", help="load: the file (u.item, or CSV/JSON lines/Parquet with --columns); show: item ids")
    catalogue.add_argument("--columns", help="item_id=sku,title=name,category=cat[,other=column...] (names, or 0-based "
                           "positions for a file without a header)")
    catalogue.add_argument("--delimiter")
    catalogue.add_argument("--quiet", action="store_true")
    catalogue.set_defaults(run=cmd_catalogue)
    backfill = sub.add_parser("backfill", help="recompute the streaming features from the Delta events table")
    backfill.add_argument("--version", type=int, help="events table version (default: latest)")
    backfill.add_argument("--online", action="store_true", help="also write the values to the online store")
    backfill.add_argument("--offline", action="store_true", help="also write the offline tables Feast joins for training")
    backfill.add_argument("--snapshot-every-s", type=float,
                          help="offline: keep each entity's history, one row per this much event time (point-in-time joins)")
    backfill.add_argument("--quiet", action="store_true")
    backfill.set_defaults(run=cmd_backfill)
    lake = sub.add_parser("lake", help="lakehouse maintenance")
    lake.add_argument("action", choices=["compact"], help="compact: optimize (merge small files) + vacuum")
    lake.add_argument("--retention-hours", type=int, default=168, help="vacuum keeps files newer than this")
    lake.set_defaults(run=cmd_lake)
    stream = sub.add_parser("stream", help="the PyFlink feature job (local mini-cluster or a session cluster)")
    stream.add_argument("action", choices=["start", "stop", "status"])
    stream.add_argument("--fresh", action="store_true", help="start: ignore retained checkpoints")
    stream.add_argument("--foreground", action="store_true", help="start: run in this terminal (Ctrl-C stops)")
    stream.add_argument("--kill", action="store_true", help="stop: SIGKILL instead of a graceful stop")
    stream.set_defaults(run=cmd_stream)
