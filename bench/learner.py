"""The streaming trainer: throughput, and how soon an event changes the model the API serves.

1. A nightly version is trained on ml-100k's first ``--history`` events (produced to the topic
   and landed in the lake with their offsets); the next ``--events`` are then only in the topic.
2. Throughput: ``recsys learn`` over those events (examples, incremental steps, one publish),
   vs consuming and decoding the same records only (the floor any consumer pays), same run.
3. Latency: the API serves; the learner runs with ``online.publish_every_s = --publish-s``; one
   event at a time is produced and the clock stops when the API serves a version trained on it.
   p50/p99 over ``--rounds``; goal: visible within a minute (the "minute-level deltas" promise).

Records learner_throughput_vs_consume (events/s trained ÷ events/s consumed-and-decoded; goal
0.05: the trainer keeps up with a twentieth of the bare consumer, far above ml-100k's live rates)
and learner_event_visible_p99_under_60s (60 ÷ p99 seconds; goal 1).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, command_line, local_stack, record  # noqa: E402


def _consume_only(settings, start: dict[int, int], expected: int) -> float:  # noqa: ANN001
    from batch.online.learn import _consumer
    from streaming.events import decode_event

    consumer = _consumer(settings, start)
    seen, began = 0, time.perf_counter()
    try:
        while seen < expected:
            for records in consumer.poll(timeout_ms=500, max_records=2000).values():
                for r in records:
                    decode_event(r.value, settings.producer.max_event_bytes)
                    seen += 1
    finally:
        consumer.close()
    return seen / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=80_000)
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--publish-s", type=float, default=1.0)
    args = parser.parse_args()
    from infra.noise import quiet_third_party_noise

    quiet_third_party_noise()
    import httpx

    from batch.online import learn
    from batch.nightly import retrain
    from batch.online.online_learner import OnlineLearner
    from features.store import apply
    from infra.processes import free_port
    from models.registry import ModelRegistry
    from serving import runner
    from streaming.events import Event, EventType
    from streaming.lake import land_topic
    from streaming.producer import EventProducer
    from streaming.replay import load_events

    with local_stack() as base:
        s = base.model_copy(update={
            "ml100k_path": (BENCH_DIR.parent / ".." / "shared" / "data" / "ml-100k" / "u.data").resolve(),
            "serving": base.serving.model_copy(update={"port": free_port(), "watch_interval_s": 0.1}),
            "online": base.online.model_copy(update={"publish_every_events": 10**9, "publish_every_s": 3600.0})})
        apply(s)
        events = load_events(s.ml100k_path).events
        with EventProducer(s) as producer:
            producer.send_many(events[:args.history])
        land_topic(s)
        retrain.run(s, progress=False)
        with EventProducer(s) as producer:
            producer.send_many(events[args.history:args.history + args.events])

        learner = OnlineLearner(s)
        began = time.perf_counter()
        start = learner.start()
        start_s = time.perf_counter() - began
        learner.start = lambda: start  # measured above; run() must not fold the lake a second time
        began = time.perf_counter()
        report = learn.run(s, idle_exit_s=1.0, learner=learner)
        train_s = time.perf_counter() - began - 1.0  # minus the idle second that ends the run
        trained_rate = report.trained / train_s
        consume_rate = _consume_only(s, start, report.consumed)
        print(f"start (lake fold of {args.history:,} events) {start_s:.1f} s; trained {report.trained:,} events at "
              f"{trained_rate:,.0f}/s (consume+decode only: {consume_rate:,.0f}/s); publish {report.published[-1].ms:.0f} ms")

        # latency: one event at a time, until the API serves a version trained on it
        live = s.model_copy(update={"online": s.online.model_copy(update={"publish_every_s": args.publish_s})})
        runner.start(live)
        stop = threading.Event()
        worker = threading.Thread(target=learn.run, kwargs={"settings": live, "stop": stop.is_set}, daemon=True)
        worker.start()
        registry = ModelRegistry(s.paths.models_dir)
        url = runner.base_url(live)
        latencies = []
        try:
            t_last = events[args.history + args.events - 1].event_time
            time.sleep(3)  # the learner's own start (lake fold)
            for i in range(args.rounds):
                before = httpx.get(url + "/model", timeout=5).json()["served"]["version"]
                event = Event(event_id=f"probe-{i}", user_id=events[i].user_id, item_id=events[i + 1].item_id,
                              event_type=EventType.RATING, value=5.0, event_time=t_last + 1000 * (i + 1))
                t0 = time.perf_counter()
                with EventProducer(live) as producer:
                    producer.send(event)
                    producer.flush()
                while time.perf_counter() - t0 < 120:
                    served = httpx.get(url + "/model", timeout=5).json()["served"]["version"]
                    if served != before and registry.meta(served).get("online", {}).get("events", 0) >= 1:
                        latencies.append(time.perf_counter() - t0)
                        break
                    time.sleep(0.01)
        finally:
            stop.set()
            worker.join(timeout=30)
            runner.stop(live)
    p50, p99 = float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))
    print(f"event -> served model trained on it: p50 {p50:.2f} s, p99 {p99:.2f} s over {len(latencies)} rounds "
          f"(publish every {args.publish_s:g} s, API watch every 0.1 s)")
    command = command_line("learner.py", parser, args)
    record("learner_throughput_vs_consume", value=trained_rate, baseline=consume_rate, ratio=trained_rate / consume_rate,
           unit="events/s", goal=0.05, command=command,
           note=f"{report.trained:,} events after a {args.history:,}-event nightly; start (lake fold) {start_s:.1f} s")
    record("learner_event_visible_p99_under_60s", value=p99, baseline=60.0, ratio=60.0 / p99 if len(latencies) == args.rounds else 0.0,
           unit="s p99", goal=1, command=command,
           note=f"p50 {p50:.2f} s over {len(latencies)}/{args.rounds} rounds, publish every {args.publish_s:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
