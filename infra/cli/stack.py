"""`recsys` commands for the local stack: services up/down/status, topic counts, the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.cli.console import console
from infra.settings import Settings


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.services import up

    for s in up(settings):
        console.print(f"[green]✓[/] {s.describe()}")
    console.print(f"topics ready: {settings.topics.events}, {settings.topics.dlq}  (data dir {settings.paths.root})")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from batch.online.learn_runner import stop as stop_learner
    from infra.services import down
    from serving.runner import stop as stop_api
    from streaming.job.stream_runner import stop as stop_stream

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


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.cli.report import topics_table

    console.print(topics_table(settings))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from infra.cli.demo import run_demo

    return run_demo(settings, console, speedup=args.speedup, holdout_days=args.holdout_days, screenshot=args.screenshot,
                    online_every_s=args.online_every_s)


def register(sub: argparse._SubParsersAction) -> None:
    up_parser = sub.add_parser("up", help="install if missing and start the local broker + Redis, create topics")
    up_parser.set_defaults(run=cmd_up)
    down_parser = sub.add_parser("down", help="stop the local services by PID")
    down_parser.set_defaults(run=cmd_down)
    status_parser = sub.add_parser("status", help="show which services run and answer (exit 3 if any does not)")
    status_parser.set_defaults(run=cmd_status)
    topics_parser = sub.add_parser("topics", help="count records in the events and DLQ topics, DLQ reasons")
    topics_parser.set_defaults(run=cmd_topics)
    demo = sub.add_parser("demo", help="the main job end to end on the local stack")
    demo.add_argument("--speedup", type=float, default=None, help="event-time speed-up for the replay (default: as fast as possible)")
    demo.add_argument("--holdout-days", type=int, default=1, help="the last N days are replayed after the first retrain and checked against it")
    demo.add_argument("--online-every-s", type=float, default=10.0,
                      help="the online learner publishes a delta this often while the held-out day plays")
    demo.add_argument("--screenshot", type=Path, help="save a headless-Chromium screenshot of the dashboard here at the end")
    demo.set_defaults(run=cmd_demo)
