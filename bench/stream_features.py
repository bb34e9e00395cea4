"""stream_features_vs_python_push: events/s from the topic to features readable through Feast.

Ours: the PyFlink feature job (streaming.job.feature_job) drains a backlog of N synthetic events
from the events topic (it also lands them in Delta). Baseline: a plain kafka-python consumer
that reads the same N events from its own topic in micro-batches (max_poll_records), validates
them, computes the same features with the same code (features.compute.InMemoryFeatures, the
steps of the job's fused stage) and calls Feast's
``FeatureStore.push(..., to=PushMode.ONLINE)`` once per feature view per micro-batch with the
latest values of the entities it touched. Sustained rate, both sides: events after the first
``--warmup`` / time from then to the last feature write (the job's JVM start and JIT warm-up
are a one-time cost of a long-running job). Goal: >= 5x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from feast.data_source import PushMode  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import box_cpu_seconds, command_line, local_stack, record  # noqa: E402
from features import names  # noqa: E402
from features.compute import InMemoryFeatures  # noqa: E402
from features.definitions import TIMESTAMP_FIELD  # noqa: E402
from features.store import apply, feature_store  # noqa: E402
from infra import kafka_clients  # noqa: E402
from infra.settings import Settings  # noqa: E402
from streaming.job import stream_runner  # noqa: E402
from streaming.events import InvalidEvent, decode_event  # noqa: E402
from streaming.job.stream_metrics import metrics_dir  # noqa: E402
from streaming.producer import EventProducer  # noqa: E402
from streaming.job.stream_metrics import totals  # noqa: E402
from streaming.synthetic import SyntheticEvents  # noqa: E402
from infra.services import ensure_topics  # noqa: E402


def bench_events(n: int) -> list[dict]:
    """The benchmark's synthetic events (10k users, 5k items, one every 10 ms), the same for
    every script that compares with this one."""
    return SyntheticEvents(n_users=10_000, n_items=5_000, seed=3).batch(n, start_ms=1_700_000_000_000, step_ms=10)


def produce(settings: Settings, events: list[dict]) -> None:
    with EventProducer(settings) as producer:
        producer.send_many(events)


def flink_rate(settings: Settings, n: int, warmup: int) -> tuple[float, str]:
    """Events/s after the first ``warmup`` events (JVM start and JIT are not the sustained rate):
    from the first metrics snapshot past ``warmup`` to the job's last feature write; and a note
    with the whole box's CPU per event over that span (``box_cpu_seconds``), which bounds what
    the cores could sustain even if every process kept them busy."""
    stream_runner.start(settings, fresh=True)
    try:
        deadline = time.monotonic() + 900
        while (m := totals(metrics_dir(settings))).get("events_in", 0) < warmup:
            if time.monotonic() > deadline or not stream_runner.status(settings, with_lag=False).running:
                raise RuntimeError(f"the stream job did not read {warmup} events: {m}; see {settings.paths.log_dir / 'stream.log'}")
            time.sleep(0.2)
        mark, cpu_at_mark, wall_at_mark = (m["events_in"], m["updated_at"]), box_cpu_seconds(), time.monotonic()
        while (m := totals(metrics_dir(settings))).get("events_in", 0) < n and time.monotonic() < deadline:
            time.sleep(0.2)  # (wait_idle below raises if the job stops or stalls)
        cpu_s, wall_s, read = box_cpu_seconds(), time.monotonic() - wall_at_mark, m.get("events_in", 0) - mark[0]
        m = stream_runner.wait_idle(settings, n, timeout_s=900)
    finally:
        stream_runner.stop(settings)
    if mark[0] >= n:
        raise RuntimeError(f"the job took all {n} events in one metrics interval: use more --events")
    note = ""
    if cpu_s is not None and cpu_at_mark is not None and read > 0:
        busy = cpu_s - cpu_at_mark
        cores = os.cpu_count() or 1
        note = (f"box CPU {1e6 * busy / read:.0f} us per event (all processes), {100 * busy / (wall_s * cores):.0f}% of "
                f"{cores} cores busy: at 100% they would sustain {read * cores / busy:,.0f} ev/s")
    return (n - mark[0]) / (m["last_write_at"] - mark[1]), note


def baseline_rate(settings: Settings, n: int, batch: int, warmup: int) -> float:
    store = feature_store(settings)
    cfg = settings.features
    consumer = kafka_clients.consumer(settings, "bench-baseline", settings.topics.events,
                             group_id="bench-baseline", auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=batch, max_partition_fetch_bytes=8 * 1024 * 1024)
    fold = InMemoryFeatures(cfg)
    users, items = fold.users, fold.items
    seen, started, seen_at_start = 0, None, 0
    with tqdm(total=n, desc="baseline", unit="ev") as bar:
        while seen < n:
            polled = consumer.poll(timeout_ms=1000)
            if not polled:
                continue
            if started is None and seen >= warmup:
                started, seen_at_start = time.perf_counter(), seen
            touched_users: dict[str, int] = {}
            touched_items: dict[str, int] = {}
            for records in polled.values():
                for rec in records:
                    seen += 1
                    try:
                        e = decode_event(rec.value)
                    except InvalidEvent:
                        continue
                    _, changed = fold.add(e.event_id, e.user_id, e.item_id, e.event_type.value, e.value, e.event_time)
                    touched_users[e.user_id] = e.event_time
                    for item_id in changed:
                        touched_items[item_id] = e.event_time
            _push(store, names.USER_STATS, names.USER_KEY, touched_users, lambda k: users[k].stats.features())
            _push(store, names.USER_RECENT, names.USER_KEY, touched_users, lambda k: users[k].recent_features())
            live = {k: t for k, t in touched_items.items() if items[k].latest_ms >= 0}
            _push(store, names.ITEM_STATS, names.ITEM_KEY, live, lambda k: items[k].stats.features())
            _push(store, names.ITEM_POPULARITY, names.ITEM_KEY, live, lambda k: items[k].popularity_features(cfg))
            _push(store, names.ITEM_COVISIT, names.ITEM_KEY, touched_items, lambda k: items[k].covisit_features(cfg))
            bar.update(sum(len(r) for r in polled.values()))
    elapsed = time.perf_counter() - started
    consumer.close()
    return (n - seen_at_start) / elapsed


def _push(store, view: str, key: str, touched: dict[str, int], values) -> None:  # noqa: ANN001
    if touched:
        rows = [{key: k, **values(k), TIMESTAMP_FIELD: datetime.fromtimestamp(t / 1000, tz=timezone.utc)} for k, t in touched.items()]
        store.push(f"{view}_push", pd.DataFrame(rows), to=PushMode.ONLINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--warmup", type=int, default=100_000, help="events read before timing starts (both sides)")
    parser.add_argument("--batch", type=int, default=5000, help="baseline micro-batch (max_poll_records)")
    parser.add_argument("--batch-ms", type=int, help="job micro-batch (stream.batch_ms; default: the setting's)")
    parser.add_argument("--parallelism", type=int, help="job parallelism (stream.parallelism; > 1 runs the two-stage "
                        "graph, one Python process per subtask: the way to use more cores)")
    args = parser.parse_args()
    events = bench_events(args.events)
    with local_stack() as base:
        overrides = {"batch_ms": args.batch_ms, "parallelism": args.parallelism}
        stream = base.stream.model_copy(update={k: v for k, v in overrides.items() if v})
        ours = base.model_copy(update={"topics": base.topics.model_copy(update={"events": "bench-flink"}), "stream": stream})
        theirs = base.model_copy(update={"topics": base.topics.model_copy(update={"events": "bench-baseline"}),
                                         "features": base.features.model_copy(update={"project": "baseline"})})
        for s in (ours, theirs):
            ensure_topics(s)
            apply(s)
            produce(s, events)
        bare = baseline_rate(theirs, args.events, args.batch, args.warmup)
        print(f"baseline (kafka-python + Feast push): {bare:,.0f} ev/s")
        flink, cpu_note = flink_rate(ours, args.events, args.warmup)
        print(f"flink job: {flink:,.0f} ev/s; {cpu_note}; metrics: {totals(metrics_dir(ours))}")
    ratio = flink / bare
    print(f"ratio {ratio:.2f}")
    # the default graph keeps the BENCH.md name; other parallelisms are recorded beside it, not over it
    name = "stream_features_vs_python_push" + (f"_p{args.parallelism}" if (args.parallelism or 1) > 1 else "")
    record(name, value=flink, baseline=bare, ratio=ratio, unit="events/s", goal=5,
           command=command_line("stream_features.py", parser, args),
           note="; ".join(filter(None, [f"absolute goal 20k ev/s: {'met' if flink >= 20_000 else 'MISSED'}", cpu_note])))


if __name__ == "__main__":
    main()
