"""stream_freshness_p99_under_500ms: time from produce to the feature being readable via Feast.

With the feature job running, a producer (the project's, with its default linger) sends a
steady trickle (default 1k events/s); every ``--probe-every``-th event is for a brand-new user
and is flushed at once, and a reader polls Feast
(``get_online_features`` on ``user_stats:n_events``) for the pending probes every few
milliseconds. Latency = first successful read - the moment before its send. Ratio = 500 / p99 (goal >= 1).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import local_stack, record  # noqa: E402
from features.store import apply, feature_store  # noqa: E402
from streaming.job import stream_runner  # noqa: E402
from streaming.producer import EventProducer  # noqa: E402
from streaming.synthetic import SyntheticEvents  # noqa: E402
from infra.services import ensure_topics  # noqa: E402


def _first_write_s(settings, store, timeout_s: float = 300.0) -> float:  # noqa: ANN001
    """Send one event and wait until its feature is readable: the job (started lazily by its
    first records: JVM, Python workers, writer processes) is up."""
    started = time.monotonic()
    with EventProducer(settings) as producer:
        producer.send({"event_id": "start-up", "user_id": "start-up", "item_id": "i0", "event_type": "view",
                       "event_time": int(time.time() * 1000)})
    while not store.get_online_features(features=["user_stats:n_events"], entity_rows=[{"user_id": "start-up"}]).to_dict()["n_events"][0]:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the stream job wrote nothing in {timeout_s}s; see {settings.paths.log_dir / 'stream.log'}")
        time.sleep(0.1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of the trickle not measured (JVM/JIT warm-up)")
    args = parser.parse_args()
    n = int(args.rate * args.duration)
    events = SyntheticEvents(n_users=5_000, n_items=2_000, seed=5).batch(n, start_ms=int(time.time() * 1000), step_ms=1000 / args.rate)
    for i in range(0, n, args.probe_every):
        events[i]["user_id"] = f"probe-{i}"
    with local_stack() as settings:
        ensure_topics(settings)
        apply(settings)
        store = feature_store(settings)
        stream_runner.start(settings, fresh=True)
        print(f"job writing after {_first_write_s(settings, store):.1f} s")  # start-up is not freshness
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        done = threading.Event()

        def reader() -> None:
            while not done.is_set() or len(seen) < len(sent):
                pending = [u for u in list(sent) if u not in seen]
                if pending:
                    got = store.get_online_features(features=["user_stats:n_events"],
                                                    entity_rows=[{"user_id": u} for u in pending]).to_dict()
                    now = time.perf_counter()
                    for u, v in zip(got["user_id"], got["n_events"]):
                        if v:
                            seen[u] = now
                if done.is_set() and time.perf_counter() - done_at[0] > 10:
                    break
                time.sleep(0.02)  # light polling: the reader shares the 2 cores with the job

        done_at = [0.0]
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            with EventProducer(settings) as producer:  # the library default linger; each probe is flushed at once
                start = time.perf_counter()
                for i, e in enumerate(events):
                    target = start + i / args.rate
                    delay = target - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    if e["user_id"].startswith("probe-"):
                        sent[e["user_id"]] = time.perf_counter()  # before the send: produce time counts
                        producer.send(e)
                        producer.flush()  # a probe does not wait for the producer's linger
                    else:
                        producer.send(e)
            done_at[0] = time.perf_counter()
            done.set()
            thread.join(timeout=30)
        finally:
            stream_runner.stop(settings)
    lat = np.array([(seen[u] - t) * 1000 for u, t in sent.items() if u in seen and t - start > args.warmup])
    missing = sum(1 for u in sent if u not in seen)
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"probes {len(lat)} (missing {missing}): p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max():.0f} ms")
    for q, part in enumerate(np.array_split(lat, 4)):
        print(f"  quarter {q + 1}: p50 {np.percentile(part, 50):.0f} ms, p99 {np.percentile(part, 99):.0f} ms")
    record("stream_freshness_p99_under_500ms", value=p99, baseline=500.0, ratio=500.0 / p99 if not missing else 0.0,
           unit="ms (p99)", goal=1, command=f"python bench/stream_freshness.py --rate {args.rate:g} --duration {args.duration:g} --warmup {args.warmup:g}",
           note=f"p50 {p50:.0f} ms, {len(lat)} probes, {missing} never seen")


if __name__ == "__main__":
    main()
