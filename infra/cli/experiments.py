"""`recsys` commands for closing the loop: the attribution job, experiments and guarded rollouts."""

from __future__ import annotations

import argparse
import time

from infra.cli.console import console
from infra.settings import ArmSettings, Settings


def cmd_attribution(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.job import attribution_runner

    if args.action == "start":
        current = attribution_runner.status(settings)
        if current.running:
            console.print(f"attribution job already running (pid {current.pid}); `recsys attribution stop` first to restart it")
            return 0
        pid, restored = attribution_runner.start(settings, fresh=args.fresh)
        where = f"resumed from {restored}" if restored else "fresh start: counting both topics from their start"
        console.print(f"[green]✓[/] attribution job running (pid {pid}), {where}; log {settings.paths.log_dir / 'attribution.log'}")
        return 0
    if args.action == "stop":
        console.print("attribution job stopped" if attribution_runner.stop(settings, kill=args.kill)
                      else "attribution job was not running")
        return 0
    st = attribution_runner.status(settings)
    colour = "green" if st.running else "red"
    console.print(f"[{colour}]●[/] attribution job: {'running (pid %d)' % st.pid if st.running else 'stopped'}; "
                  f"latest checkpoint: {st.latest_checkpoint or 'none'}")
    m = st.metrics
    if m:
        console.print(f"  impressions in {m.get('impressions_in', 0):,} | events in {m.get('events_in', 0):,} | "
                      f"late {m.get('late', 0):,} | bad impressions {m.get('bad_impressions', 0):,} | "
                      f"lake rows {m.get('lake_rows', 0):,}")
        if m.get("updated_at"):
            console.print(f"  last activity {time.time() - m['updated_at']:.1f}s ago")
    return 0 if st.running else 3


def parse_arm(text: str) -> ArmSettings:
    """``name=version:share``, e.g. ``b=v0004:0.5``."""
    name, sep, rest = text.partition("=")
    version, sep2, share = rest.partition(":")
    if not (sep and sep2):
        raise ValueError(f"--arm {text!r}: write it as name=version:share, e.g. --arm b=v0004:0.5")
    return ArmSettings(name=name, version=version, share=float(share))


def cmd_experiment(settings: Settings, args: argparse.Namespace) -> int:
    from models.registry import ModelRegistry
    from serving.experiments import Experiment, ExperimentStore

    store = ExperimentStore(settings.paths.experiments_dir)
    if args.action == "start":
        arms = [parse_arm(a) for a in args.arm] if args.arm else settings.experiments.arms
        name = args.name or settings.experiments.name
        if not arms or not name:
            raise ValueError("say what to compare: `recsys experiment start --name ab --arm control=v0003:0.5 "
                             "--arm b=v0004:0.5` (or experiments.name and experiments.arms in the settings)")
        known = ModelRegistry(settings.paths.models_dir).versions()
        missing = [a.version for a in arms if a.version not in known]
        if missing:
            raise ValueError(f"no model version {', '.join(missing)} in the registry: pick from {known}")
        exp = store.start(Experiment(name=name, arms=arms))
        console.print(f"[green]✓[/] experiment {exp.name} running: "
                      + ", ".join(f"{a.name} = {a.version} ({a.share:.0%})" for a in exp.arms)
                      + "; the API serves each user their arm within a second")
        return 0
    if args.action == "stop":
        ended = store.end("stopped", args.reason or "stopped by `recsys experiment stop`")
        console.print(f"experiment {ended.name} stopped; the served version is unchanged")
        return 0
    return show_status(settings, store)


def show_status(settings: Settings, store) -> int:  # noqa: ANN001 - serving.experiments.ExperimentStore
    from rich.table import Table

    from serving.rollout import results
    from streaming.attribution_counts import AttributionCounts

    exp = store.current()
    if exp is None:
        console.print("no experiment yet: `recsys experiment start ...` or `recsys rollout VERSION`")
        return 3
    import redis

    try:
        out = results(exp, AttributionCounts.for_settings(settings), settings.experiments.confidence)
    except redis.RedisError as e:
        raise ConnectionError(f"the attribution counts live in Redis at {settings.redis.host}:{settings.redis.port}, "
                              f"which does not answer ({e}): start it with `recsys up`") from e
    state = exp.status if exp.status == "running" else f"ended: {exp.outcome}"
    table = Table(title=f"{exp.kind} {exp.name} ({state}) · started {exp.started_at[:19]}")
    for column in ("arm", "version", "share", "lists", "hit rate", "CTR", "users", f"vs {out['control']} ({settings.experiments.confidence:.0%} interval)"):
        table.add_column(column)
    for row in out["arms"]:
        vs = row.get("vs_control")
        table.add_row(row["arm"], row["version"], f"{row['share']:.0%}", f"{row['lists']:,}", f"{row['hit_rate']:.4f}",
                      f"{row['ctr']:.4f}", f"{row['users']:,}",
                      f"{vs['relative']:+.1%} ({vs['relative_low']:+.1%} to {vs['relative_high']:+.1%})" if vs else "control")
    console.print(table)
    if exp.reason:
        console.print(f"  {exp.outcome}: {exp.reason}")
    return 0


def cmd_rollout(settings: Settings, args: argparse.Namespace) -> int:
    from serving.rollout import start_rollout

    exp = start_rollout(settings, args.version, args.share)
    canary, control = exp.arm("canary"), exp.arm("control")
    r = settings.experiments.rollout
    console.print(f"[green]✓[/] rolling out {canary.version} to {canary.share:.0%} of users beside {control.version}; "
                  f"the API's guard promotes or rolls it back from live hit rates (from {r.min_lists} lists per arm, "
                  f"promoted after {r.budget_lists} canary lists without harm); `recsys experiment status` shows it")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    attribution = sub.add_parser("attribution", help="the live attribution job: served lists joined with what users did next")
    attribution.add_argument("action", choices=["start", "stop", "status"])
    attribution.add_argument("--fresh", action="store_true", help="start: forget the counts and count both topics again")
    attribution.add_argument("--kill", action="store_true", help="stop: SIGKILL instead of a graceful stop")
    attribution.set_defaults(run=cmd_attribution)
    experiment = sub.add_parser("experiment", help="A/B experiments between model versions: start, status, stop")
    experiment.add_argument("action", choices=["start", "status", "stop"])
    experiment.add_argument("--name", help="start: its name (default experiments.name)")
    experiment.add_argument("--arm", action="append", default=[], help="start: name=version:share, once per arm (default experiments.arms)")
    experiment.add_argument("--reason", help="stop: why (kept in the experiment's history)")
    experiment.set_defaults(run=cmd_experiment)
    rollout = sub.add_parser("rollout", help="serve a version to a canary share under the guard (promoted or rolled back from live metrics)")
    rollout.add_argument("version")
    rollout.add_argument("--share", type=float, help="its share of users (default experiments.rollout.canary_share)")
    rollout.set_defaults(run=cmd_rollout)
