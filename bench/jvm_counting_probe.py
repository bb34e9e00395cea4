"""A probe, not a goal check: what counting features cost when Flink SQL computes them in the JVM.

Issue #3's throughput goal (5x the Python push baseline, 20k ev/s on 2 cores) is out of reach of
the Python feature job on this box (docs/streaming.md, "the box's budget"). One way out is moving
features into JVM code. This measures the JVM side of that option on the same synthetic events
and local broker as bench/stream_features.py: a SQL job reads the topic (JSON), counts events per
item and type in 1-minute event-time windows and per user and type (count, average value, last
time), into Flink's blackhole sink. Not included: writes to Redis, co-visitation, recent items.

Each topic size is a separate bounded job (``scan.bounded.mode = latest-offset``); the marginal
rate between the two largest leaves out JVM start-up and job submission. (Against Tansu a
bounded read stops a few dozen records short of the end, ~0.1% of 100k; the unbounded source
the feature job uses reads every record, as its tests check.) Nothing is recorded in
bench/RESULTS.md: there is no baseline to compare with, only a cost to weigh.

    python bench/jvm_counting_probe.py [--events 50000 300000 1200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import box_cpu_seconds, local_stack  # noqa: E402
from bench.stream_features import bench_events, produce  # noqa: E402
from infra.settings import Settings  # noqa: E402
from streaming.job.feature_job import flink_config  # noqa: E402
from infra.services import ensure_topics  # noqa: E402

POPULARITY = """INSERT INTO popularity SELECT item_id, event_type, COUNT(*), CAST(NULL AS DOUBLE), MAX(event_time)
  FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
  GROUP BY item_id, event_type, window_start, window_end"""
USER_STATS = """INSERT INTO user_stats SELECT user_id, event_type, COUNT(*), AVG(`value`), MAX(event_time)
  FROM events GROUP BY user_id, event_type"""


def run_counting_job(settings: Settings) -> tuple[float, float | None]:
    """Wall seconds and the whole box's busy CPU seconds (None where /proc/stat is missing) to
    drain the topic through the SQL job."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    for key, value in flink_config(settings).items():
        if not key.startswith("python."):
            conf.set_string(key, value)
    t_env = StreamTableEnvironment.create(StreamExecutionEnvironment.get_execution_environment(conf))
    t_env.execute_sql(f"""CREATE TABLE events (user_id STRING, item_id STRING, event_type STRING, `value` DOUBLE,
      event_time BIGINT, ts AS TO_TIMESTAMP_LTZ(event_time, 3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
      WITH ('connector' = 'kafka', 'topic' = '{settings.topics.events}',
            'properties.bootstrap.servers' = '{settings.broker.bootstrap}', 'properties.group.id' = 'probe',
            'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset', 'format' = 'json')""")
    for table in ("popularity", "user_stats"):
        t_env.execute_sql(f"CREATE TABLE {table} (k STRING, type STRING, n BIGINT, avg_value DOUBLE, last_ms BIGINT) "
                          "WITH ('connector' = 'blackhole')")
    statements = t_env.create_statement_set()
    statements.add_insert_sql(POPULARITY)
    statements.add_insert_sql(USER_STATS)
    cpu, started = box_cpu_seconds(), time.monotonic()
    statements.execute().wait()
    wall, after = time.monotonic() - started, box_cpu_seconds()
    return wall, None if cpu is None or after is None else after - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[50_000, 300_000, 1_200_000],
                        help="topic sizes, one bounded job each (the first warms up the JVM)")
    args = parser.parse_args()
    if len(set(args.events)) < 3:
        parser.error("give at least three different --events sizes: the first job warms up the JVM, "
                     "and the rate is the difference between the two largest")
    measured: dict[int, tuple[float, float | None]] = {}
    with local_stack() as base:
        for n in sorted(args.events):
            settings = base.model_copy(update={"topics": base.topics.model_copy(update={"events": f"probe-{n}"})})
            ensure_topics(settings)
            produce(settings, bench_events(n))
            measured[n] = run_counting_job(settings)
            wall_s, cpu_s = measured[n]
            print(f"{n:,} events: {wall_s:.1f} s wall" + ("" if cpu_s is None else f", {cpu_s:.1f} s of box CPU"), flush=True)
    (small, (wall_small, cpu_small)), (large, (wall_large, cpu_large)) = sorted(measured.items())[-2:]
    cpu_note = "" if cpu_small is None or cpu_large is None else \
        f", {1e6 * (cpu_large - cpu_small) / (large - small):.1f} us of box CPU per event"
    print(f"marginal: {(large - small) / (wall_large - wall_small):,.0f} ev/s{cpu_note}")


if __name__ == "__main__":
    main()
