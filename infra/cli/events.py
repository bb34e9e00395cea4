"""`recsys` commands for events in: replay a file, generate synthetic load."""

from __future__ import annotations

import argparse
import time

from infra.cli.console import console
from infra.cli.event_files import event_file_arguments, load_event_file
from infra.settings import Settings


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streaming.ingest import send_events
    from streaming.pacing import Pacer
    from streaming.producer import EventProducer

    loaded = load_event_file(settings, args, max_in_memory=args.memory_events or settings.events.replay_memory_events)
    console.print(f"loaded {len(loaded.events):,} events from {args.path} ({loaded.rejection_summary()}; "
                  f"times in {loaded.time_unit}; {loaded.events.describe()})")
    with loaded, EventProducer(settings) as producer:
        result = send_events(
            producer,
            loaded.events,
            pacer=Pacer(args.speedup, args.max_rate),
            description="replay",
            show_progress=not args.quiet,
            rejected=(row for row, _ in loaded.rejected),
        )
    print_report(result.report, result.rate)
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
    print_report(result.report, result.rate)
    return 0


def print_report(report, rate: float) -> None:  # type: ignore[no-untyped-def]
    console.print(
        f"sent {report.sent:,} (acked {report.acked:,}) at {rate:,.0f} ev/s; "
        f"dead-lettered {report.rejected:,} {dict(report.reasons) if report.reasons else ''}"
    )


def register(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="replay an interaction file in event-time order")
    event_file_arguments(replay)
    replay.add_argument("--speedup", type=float, help="event-time speed-up factor (e.g. 86400: a day per second)")
    replay.add_argument("--max-rate", type=float, help="cap in events/s")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.add_argument("--memory-events", type=int, help="events held to put the file in time order; more are "
                        "sorted on disk and merged (default: the events.replay_memory_events setting)")
    replay.set_defaults(run=cmd_replay)
    produce = sub.add_parser("produce", help="generate synthetic Zipf events for load tests")
    produce.add_argument("--rate", type=float, default=1000.0, help="events/s")
    produce.add_argument("--duration", type=float, default=10.0, help="seconds")
    produce.add_argument("--users", type=int, default=10_000)
    produce.add_argument("--items", type=int, default=5_000)
    produce.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of user/item popularity")
    produce.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed events (go to the DLQ)")
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--quiet", action="store_true")
    produce.set_defaults(run=cmd_produce)
