"""attribution_freshness_p99_under_5s: time from an engaging event to its count in Redis.

The attribution job runs on a local stack under steady background traffic (``--rate`` served
lists/s on the impressions topic and as many events/s on the events topic, a third of them
engaging a shown item). Probes: ``--probes`` lists are served first, each under its own arm label
``probe-<k>``; then one probe event per ``1 / --probe-rate`` s engages its list's first item, and a
reader polls that arm's ``engaged`` count in Redis every few ms. Latency = first read showing it -
the moment before its send. Ratio = 5 / p99 seconds (goal >= 1).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from bench.common import command_line, local_stack, record  # noqa: E402

VERSION = "v0001"


def _list(request_id: str, user: str, items: list[str], arm: str | None, now_ms: int) -> bytes:
    return orjson.dumps({"request_id": request_id, "user_id": user, "model_version": VERSION, "arm": arm,
                         "served_at_ms": now_ms, "event_clock_ms": now_ms,
                         "items": [{"item_id": it, "position": p, "score": 1.0, "sources": ["similar"]}
                                   for p, it in enumerate(items)]})


def _event(event_id: str, user: str, item: str, event_type: str, now_ms: int) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": event_type, "event_time": now_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200, help="background lists/s (and events/s)")
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--probe-rate", type=float, default=10, help="probe events/s")
    args = parser.parse_args()
    from rich.console import Console

    from infra import kafka_clients
    from streaming.attribution_counts import AttributionCounts
    from streaming.job import attribution_runner
    from streaming.producer import EventProducer

    console = Console()
    with local_stack() as settings:
        counts = AttributionCounts.for_settings(settings)
        raw = kafka_clients.producer(settings, "bench-impressions", linger_ms=5)
        topic = settings.topics.impressions
        now = int(time.time() * 1000)
        probes = [(f"probe-user-{k}", f"probe-item-{k}") for k in range(args.probes)]
        for k, (user, item) in enumerate(probes):
            raw.send(topic, key=user.encode(), value=_list(f"probe-{k}", user, [item, "filler"], f"probe-{k}", now))
        raw.flush()
        attribution_runner.start(settings, fresh=True)
        attribution_runner.wait_read(settings, args.probes, 0, timeout_s=240)
        console.print("attribution job up; background traffic and probes start")

        stop = threading.Event()

        def background() -> None:
            rng = random.Random(0)
            shown: list[tuple[str, str]] = []
            n = 0
            with EventProducer(settings) as producer:
                while not stop.is_set():
                    t = int(time.time() * 1000)
                    user = f"u{rng.randrange(5000)}"
                    items = [f"i{rng.randrange(2000)}" for _ in range(10)]
                    raw.send(topic, key=user.encode(), value=_list(f"bg-{n}", user, items, None, t))
                    shown.append((user, items[rng.randrange(10)]))
                    u, it = shown[rng.randrange(len(shown))] if rng.random() < 1 / 3 else (user, f"i{rng.randrange(2000)}")
                    producer.send(_event(f"bg-e{n}", u, it, "click", t))
                    n += 1
                    if n % 50 == 0:
                        producer.flush()
                    time.sleep(1 / args.rate)

        sent_at: dict[int, float] = {}
        seen_at: dict[int, float] = {}

        def reader() -> None:
            while not stop.is_set() or len(seen_at) < len(sent_at):
                for k in [k for k in sent_at if k not in seen_at]:
                    if counts.read(VERSION, f"probe-{k}").engaged:
                        seen_at[k] = time.monotonic()
                time.sleep(0.005)
                if stop.is_set() and time.monotonic() - last_send[0] > 30:
                    return

        last_send = [time.monotonic()]
        threads = [threading.Thread(target=background, daemon=True), threading.Thread(target=reader, daemon=True)]
        for t in threads:
            t.start()
        time.sleep(3)  # background traffic settles
        probing_from = time.monotonic()
        try:
            with EventProducer(settings, linger_ms=0) as producer:
                for k, (user, item) in enumerate(probes):
                    t0 = time.monotonic()
                    producer.send(_event(f"probe-e{k}", user, item, "click", int(time.time() * 1000)))
                    producer.flush()
                    sent_at[k] = t0
                    last_send[0] = t0
                    time.sleep(max(0.0, 1 / args.probe_rate - (time.monotonic() - t0)))
        finally:
            probing_s = time.monotonic() - probing_from
            stop.set()
            threads[1].join(timeout=40)
            st = attribution_runner.status(settings)
            attribution_runner.stop(settings)
            raw.close()
    lat = np.array([seen_at[k] - sent_at[k] for k in seen_at]) if seen_at else np.array([np.inf])
    missing = len(sent_at) - len(seen_at)
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    console.print(f"probes {len(sent_at)}, seen {len(seen_at)}; p50 {p50:.3f} s, p99 {p99:.3f} s; "
                  f"job read {st.metrics.get('impressions_in', 0):,} lists and {st.metrics.get('events_in', 0):,} events")
    record("attribution_freshness_p99_under_5s", value=p99, baseline=5.0, ratio=5.0 / p99 if not missing else 0.0,
           unit="s (p99)", goal=1, command=command_line("attribution_freshness.py", parser, args),
           note=f"p50 {p50:.3f} s, {len(seen_at)} probes, {missing} never seen; background offered {args.rate:g}/s, "
                f"the job read {st.metrics.get('impressions_in', 0):,} lists and {st.metrics.get('events_in', 0):,} events "
                f"in ~{probing_s + 3:.0f} s; micro-batches of {settings.attribution.batch_ms} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
