"""The live attribution job: impressions + events topics -> per-version counts in Redis, impressions in Delta Lake.

Run locally (a Flink mini-cluster inside this process) by `recsys attribution start`, or submit
the same file to a Flink session cluster:

    flink run -py streaming/job/attribution_job.py -pyexec /path/to/venv/bin/python [--config recsys.yaml]

Source: one Kafka SQL table over both topics (each record with its topic, partition and offset),
grouped per topic partition into micro-batches of ``attribution.batch_ms`` as in the feature job;
one keyed function (streaming.job.attribution_function) does the attribution. It reads the events
topic with its own consumer group, so it never takes events from the feature job. Checkpoints
are on and retained on cancel; ``--restore PATH`` resumes from one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infra.settings import Settings

SOURCE_TABLE = "recsys_attribution_source"


def micro_batches_sql(settings: Settings) -> str:
    """One row per topic partition per ``attribution.batch_ms``: ``(0, (topic, partition, offsets,
    payloads, oldest Kafka time))``, keyed 0: one shard sees a user's lists and events together."""
    seconds = f"{settings.attribution.batch_ms / 1000:.3f}"
    return f"""
SELECT 0 AS k, ROW(`topic`, `partition`, offsets, payloads, first_ts) AS batch FROM (
  SELECT `topic`, `partition`, ARRAY_AGG(`offset`) AS offsets, ARRAY_AGG(payload) AS payloads, MIN(`timestamp`) AS first_ts
  FROM TABLE(TUMBLE(TABLE {SOURCE_TABLE}, DESCRIPTOR(proc_time), INTERVAL '{seconds}' SECOND))
  GROUP BY `topic`, `partition`, window_start, window_end)"""


def build(settings: Settings, restore: Path | None = None):  # noqa: ANN201 - a StreamExecutionEnvironment
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from streaming.job.attribution_function import AttributionFunction
    from streaming.job.feature_job import flink_config, keyed, source_ddl

    a = settings.attribution
    conf = Configuration()
    for key, value in flink_config(settings, restore, a.job_name, settings.paths.attribution_checkpoint_dir).items():
        conf.set_string(key, value)
    conf.set_string("parallelism.default", "1")  # one shard (see micro_batches_sql)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(source_ddl(settings, SOURCE_TABLE, (settings.topics.events, settings.topics.impressions),
                                 a.group_id, a.job_name))
    batch_type = Types.ROW([Types.INT(), Types.ROW([Types.STRING(), Types.INT(), Types.BASIC_ARRAY(Types.LONG()),
                                                    Types.OBJECT_ARRAY(Types.PRIMITIVE_ARRAY(Types.BYTE())),
                                                    Types.INSTANT()])])
    batches = t_env.to_append_stream(t_env.sql_query(micro_batches_sql(settings)), batch_type)
    (
        keyed(batches, Types.INT())
        .process(AttributionFunction(settings), output_type=Types.BOOLEAN())
        .name("attribute impressions").uid("attribution")
        .print()
    )
    return env


def main(argv: list[str] | None = None) -> int:
    from streaming.job.feature_job import run_job

    return run_job(argv, __doc__, build, lambda s: s.attribution.job_name)


if __name__ == "__main__":
    sys.exit(main())
