"""ingest_vs_bare_kafka_python: events/s acknowledged, our producer vs a bare kafka-python loop.

Both send the same synthetic events (dicts, as a backend holds them) to the same local broker
with the same client settings (acks=all, linger, batch size); the bare loop only does
``json.dumps`` + ``send``, ours validates against the event contract, serialises, tracks every
delivery and bounds the buffer. Rounds alternate so drift hits both equally; best round counts.
Goal: ratio >= 0.9 and ours >= 20k events/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import local_stack, record  # noqa: E402
from infra import kafka_clients  # noqa: E402
from infra.settings import Settings  # noqa: E402
from streaming.producer import EventProducer  # noqa: E402
from streaming.synthetic import SyntheticEvents  # noqa: E402
from infra.services import ensure_topics  # noqa: E402


def bare_loop(settings: Settings, topic: str, events: list[dict]) -> float:
    p = settings.producer
    producer = kafka_clients.producer(
        settings,
        "bench-bare",
        acks=p.acks,
        linger_ms=p.linger_ms,
        batch_size=p.batch_size,
        retries=p.retries,
    )
    start = time.perf_counter()
    for e in events:
        producer.send(topic, key=e["user_id"].encode(), value=json.dumps(e).encode())
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return len(events) / elapsed


def our_producer(settings: Settings, topic: str, events: list[dict]) -> float:
    producer = EventProducer(settings, topic=topic)
    start = time.perf_counter()
    for e in events:
        producer.send(e)
    report = producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    assert report.acked == len(events) and report.rejected == 0, report
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = SyntheticEvents(seed=1).batch(args.events, start_ms=1_700_000_000_000)
    with local_stack() as settings:
        ensure_topics(settings)
        ours, bare = [], []
        for r in range(args.rounds):
            bare.append(bare_loop(settings, settings.topics.events, events))
            ours.append(our_producer(settings, settings.topics.events, events))
            print(f"round {r + 1}: bare {bare[-1]:,.0f} ev/s, ours {ours[-1]:,.0f} ev/s")
    best_ours, best_bare = max(ours), max(bare)
    ratio = best_ours / best_bare
    print(f"best: ours {best_ours:,.0f} ev/s, bare {best_bare:,.0f} ev/s, ratio {ratio:.3f}")
    record(
        "ingest_vs_bare_kafka_python",
        value=best_ours,
        baseline=best_bare,
        ratio=ratio,
        unit="events/s",
        goal=0.9,
        command=f"python bench/ingest.py --events {args.events} --rounds {args.rounds}",
        note=f"absolute goal 20k ev/s: {'met' if best_ours >= 20_000 else 'MISSED'}",
    )


if __name__ == "__main__":
    main()
