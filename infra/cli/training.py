"""`recsys` commands for models: nightly retrain, the online learner, evaluation, the schedule, the registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.cli.console import console
from infra.cli.event_files import event_file_arguments, load_event_file
from infra.settings import Settings


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from batch.nightly import retrain

    if args.nproc:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update={"nproc": args.nproc})})
    result = retrain.run(settings, version=args.version, progress=not args.quiet, promote=not args.no_promote, console=console)
    console.print(f"report: {result.report_dir / 'report.json'} and report.png")
    return 0 if result.promoted or args.no_promote else 4


def cmd_learn(settings: Settings, args: argparse.Namespace) -> int:
    from batch.online import learn

    o = settings.online
    update = {k: v for k, v in (("publish_every_s", args.every_s), ("publish_every_events", args.every_events)) if v}
    if update:
        settings = settings.model_copy(update={"online": o.model_copy(update=update)})
    o = settings.online
    if args.action != "run":
        return _learn_service(settings, args.action)
    console.print(f"[bold]learn[/]: training the served model on {settings.topics.events}; a delta every "
                  f"{o.publish_every_s:g} s or {o.publish_every_events:,} events (Ctrl-C stops after publishing)")

    def published(r) -> None:  # noqa: ANN001 - batch.online.online_learner.PublishResult
        rows = ", ".join(f"{k.split('.')[-2]} {n}" for k, n in r.rows_changed.items() if n) or "no rows"
        console.print(f"[green]{r.version}[/]: {r.events:,} events, {r.examples:,} examples, changed rows: {rows} "
                      f"({r.ms:.0f} ms)")

    report = learn.run(settings, idle_exit_s=args.idle_exit_s, max_events=args.max_events, on_publish=published)
    console.print(f"consumed {report.consumed:,}, trained {report.trained:,}, invalid skipped {report.skipped_invalid:,}, "
                  f"late skipped {report.skipped_late:,}, "
                  f"{len(report.published)} versions published, {report.rebases} rebases onto a newer served version")
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from batch.evaluate.evaluation import evaluate, replay_window
    from batch.evaluate.prequential_report import write_report

    args.path = args.path or settings.ml100k_path
    loaded = load_event_file(settings, args)
    if not loaded.events:
        raise ValueError(f"{args.path} has no valid events: {loaded.rejection_summary()}; check --columns/--time-unit "
                         "(and that event types are among the accepted ones)")
    if args.baselines is not None:
        chosen = [b for b in args.baselines.split(",") if b and b != "none"]
        settings = settings.model_copy(update={"evaluation": settings.evaluation.model_validate(
            {**settings.evaluation.model_dump(), "baselines": chosen})})
    window = replay_window(loaded.events, args.eval_days, args.skip_last_days or 0.0, args.renew_items or 0.0,
                           args.renew_every_days)
    console.print(f"[bold]evaluate[/]: {len(window.events):,} events from {args.path} (times in {loaded.time_unit}"
                  f"{'; ' + loaded.rejection_summary() if loaded.rejected else ''}); {window.description} are replayed "
                  f"prequentially (recommend, then learn), retraining every {args.retrain_every_days:g} days; "
                  f"baselines: {', '.join(settings.evaluation.baselines) or 'none'}")
    if args.renew_items:
        console.print(f"  catalogue churn: {args.renew_items:.0%} of items relaunched under a new id every "
                      f"{args.renew_every_days:g} days of the evaluated period")
    catalogue = None
    if args.catalogue:
        from batch.catalogue import catalogue_columns, read_catalogue

        catalogue = read_catalogue(args.catalogue, catalogue_columns(args.catalogue_columns))
    report = evaluate(settings, window, k=args.k, retrain_every_days=args.retrain_every_days, progress=not args.quiet,
                      catalogue=catalogue)
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


def _learn_service(settings: Settings, action: str) -> int:
    from batch.online import learn_runner

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


def register(sub: argparse._SubParsersAction) -> None:
    retrain = sub.add_parser("retrain", help="the nightly job: Delta -> point-in-time data -> TorchRec -> evaluated version + delta")
    retrain.add_argument("--version", type=int, help="events table version to train on (default: latest; recorded in the model)")
    retrain.add_argument("--nproc", type=int, help="training processes (torchrun + gloo DistributedModelParallel); default training.nproc")
    retrain.add_argument("--no-promote", action="store_true", help="publish the version but do not serve it")
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(run=cmd_retrain)
    learn = sub.add_parser("learn", help="the streaming trainer: train the served model on new events, publish minute-level deltas")
    learn.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"],
                       help="run in the foreground (default), or start|stop|status in the background")
    learn.add_argument("--every-s", type=float, help="publish at most this often (default online.publish_every_s)")
    learn.add_argument("--every-events", type=int, help="... or after this many events (default online.publish_every_events)")
    learn.add_argument("--idle-exit-s", type=float, help="stop after this many seconds without a new event (default: run until Ctrl-C)")
    learn.add_argument("--max-events", type=int, help="stop after training this many events")
    learn.set_defaults(run=cmd_learn)
    evaluate = sub.add_parser("evaluate", help="prequential replay: the engine (static, daily, daily+online) vs popularity, item-kNN, EASE, SASRec: HR/NDCG over time")
    event_file_arguments(evaluate, optional=True)
    evaluate.add_argument("--eval-days", type=float, default=14.0, help="the last N days are evaluated (before: history)")
    evaluate.add_argument("--retrain-every-days", type=float, default=1.0, help="the daily strategy's retrain period")
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--renew-items", type=float, default=0.0, metavar="FRACTION",
                          help="catalogue churn: relaunch this fraction of items under a new id every --renew-every-days "
                               "of the evaluated period (batch.evaluate.catalogue_churn; default 0: the file as it is)")
    evaluate.add_argument("--renew-every-days", type=float, default=1.0)
    evaluate.add_argument("--skip-last-days", type=float, default=0.0, metavar="DAYS",
                          help="drop the file's last DAYS first: --skip-last-days 14 evaluates a validation window "
                               "before the default one (tune there, report on the default window once)")
    evaluate.add_argument("--baselines", default=None, metavar="LIST",
                          help="comma-separated yardsticks to run beside the engine (item_knn,ease,sasrec; 'none'); "
                               "default: evaluation.baselines")
    evaluate.add_argument("--out", default=None, help="directory for prequential.json and prequential.png "
                          "(default <data_dir>/reports, where the dashboard reads it)")
    evaluate.add_argument("--catalogue", help="item metadata (u.item, or a file with --catalogue-columns): the "
                          "categories a ranker with ranker.category_affinity reads")
    evaluate.add_argument("--catalogue-columns", help="as `recsys catalogue load --columns`: item_id=sku,category=cat")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)
    schedule_parser = sub.add_parser("schedule", help="run `recsys retrain` daily at schedule.daily_at (local scheduler; see infra/production for cron/K8s/Airflow)")
    schedule_parser.set_defaults(run=cmd_schedule)
    model = sub.add_parser("model", help="the model registry: list, show, verify, rollback")
    model.add_argument("action", choices=["list", "show", "verify", "rollback"])
    model.add_argument("version", nargs="?", help="show/verify: a version (default: the served one / all versions)")
    model.set_defaults(run=cmd_model)
