"""The streaming feature job: events topic -> features in Feast/Redis + events in Delta Lake.

Run locally (a Flink mini-cluster inside this process) by `recsys stream start`, or submit the
same file to a Flink session cluster:

    flink run -py streaming/job/feature_job.py -pyexec /path/to/venv/bin/python [--config recsys.yaml]

Source: the Kafka SQL connector (raw bytes + partition/offset metadata), grouped by the Java
runtime into per-partition micro-batches; event time, watermarks and lateness are handled per
partition in streaming.job.feature_functions. Checkpoints are on and retained on cancel, and
`--restore PATH` (what `recsys stream start` passes) resumes from the latest one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from infra.noise import quiet_third_party_noise
from infra.processes import received_settings
from infra.settings import Settings, secret_env

SOURCE_TABLE = "recsys_events"


def flink_config(settings: Settings, restore: Path | None = None, job_name: str | None = None,
                 checkpoint_dir: Path | None = None) -> dict[str, str]:
    """Flink + PyFlink configuration for this job, or another one of the engine's (the
    attribution job passes its name and checkpoint directory); settings.stream.flink_config wins."""
    s = settings.stream
    checkpoints = (checkpoint_dir or settings.paths.checkpoint_dir).absolute().as_uri()
    conf = {
        "pipeline.name": job_name or s.job_name,
        "parallelism.default": str(s.parallelism),
        "execution.checkpointing.interval": f"{s.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoints,
        "state.checkpoints.dir": checkpoints,
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": str(s.checkpoints_retained),
        "state.backend.type": "hashmap",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "3",
        "restart-strategy.fixed-delay.delay": "2 s",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(s.bundle_size),
        "python.fn-execution.bundle.time": str(s.bundle_time_ms),
        "python.state.cache-size": "50000",
        # network buffers between operators are flushed at least this often (default 100 ms)
        "execution.buffer-timeout.interval": f"{s.buffer_timeout_ms} ms",
        "execution.buffer-timeout": f"{s.buffer_timeout_ms} ms",
        "taskmanager.memory.process.size": "1600m",
    }
    if restore is not None:
        conf["execution.state-recovery.path"] = restore.absolute().as_uri()
    if s.jobmanager:
        host, _, port = s.jobmanager.partition(":")
        conf.update({"execution.target": "remote", "rest.address": host, "rest.port": port or "8081"})
    conf.update(s.flink_config)
    return conf


def source_ddl(settings: Settings, table: str = SOURCE_TABLE, topics: tuple[str, ...] | None = None,
               group_id: str | None = None, client_prefix: str | None = None) -> str:
    """The Kafka source table: the events topic for this job; ``topics`` (semicolon-joined for
    the connector) for another, which then also gets each record's ``topic``."""
    from infra.kafka_clients import java_properties

    s = settings.stream
    client = "".join(f"  'properties.{k}' = '{_sql_quoted(v)}',\n" for k, v in java_properties(settings).items())
    topic_column = "  `topic` STRING METADATA VIRTUAL,\n" if topics else ""
    return f"""
CREATE TABLE {table} (
  payload BYTES,
{topic_column}  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `timestamp` TIMESTAMP_LTZ(3) METADATA VIRTUAL,
  proc_time AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '{";".join(topics) if topics else settings.topics.events}',
{client}  'properties.group.id' = '{group_id or s.group_id}',
  'properties.client.id.prefix' = '{client_prefix or s.job_name}',
  'properties.fetch.max.wait.ms' = '{s.fetch_max_wait_ms}',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'raw'
)"""


def _sql_quoted(value: str) -> str:
    return value.replace("'", "''")


def micro_batches_sql(settings: Settings, key: str) -> str:
    """One row per Kafka partition per ``batch_ms``: ``(key, (partition, offsets, payloads, first_ts))``
    (``first_ts``: the oldest Kafka record timestamp in the batch, for the write-delay metric).

    The key comes first so the stream is keyed on the Java side (see :func:`keyed`). Two arrays
    of plain values rather than one array of ROW(offset, payload): the thread-mode (pemja) bridge
    hands Python the same Row object for every element of an array of rows. Both aggregates
    accumulate the group's rows in the same order, so the arrays line up.
    """
    seconds = f"{settings.stream.batch_ms / 1000:.3f}"
    return f"""
SELECT {key} AS k, ROW(`partition`, offsets, payloads, first_ts) AS batch FROM (
  SELECT `partition`, ARRAY_AGG(`offset`) AS offsets, ARRAY_AGG(payload) AS payloads, MIN(`timestamp`) AS first_ts
  FROM TABLE(TUMBLE(TABLE {SOURCE_TABLE}, DESCRIPTOR(proc_time), INTERVAL '{seconds}' SECOND))
  GROUP BY `partition`, window_start, window_end)"""


def keyed(stream, key_type):  # noqa: ANN001, ANN201 - pyflink DataStream -> KeyedStream
    """Key a stream of ``(key, value)`` rows by field 0 in Java.

    ``DataStream.key_by`` runs a Python function to compute the key: one more trip of every
    micro-batch through a Python worker (and, at parallelism 1, through the same interpreter
    that computes the features). The micro-batch query already carries its key, so the Java
    key selector PyFlink itself uses after that Python step is applied directly.
    """
    from pyflink.common import Types
    from pyflink.datastream.data_stream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, None, stream)


def build(settings: Settings, restore: Path | None = None):  # noqa: ANN201 - a StreamExecutionEnvironment
    """The job graph: source -> micro-batches -> per-partition function -> per-item-shard function
    (parallelism > 1), or one fused function (parallelism 1, the local default)."""
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from features.store import registered_views
    from streaming.job.feature_functions import PICKLED, ItemShardFunction, PartitionFunction

    registered_views(settings)  # fail here, with the fix in the message, if `features apply` never ran
    conf = Configuration()
    for key, value in flink_config(settings, restore).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(source_ddl(settings))
    fused = settings.stream.parallelism == 1  # one subtask: users and items in one Python function, no shuffle
    batch_type = Types.ROW([Types.INT(), Types.ROW([Types.INT(), Types.BASIC_ARRAY(Types.LONG()),
                                                    Types.OBJECT_ARRAY(Types.PRIMITIVE_ARRAY(Types.BYTE())),
                                                    Types.INSTANT()])])
    query = t_env.sql_query(micro_batches_sql(settings, "0" if fused else "`partition`"))
    batches = t_env.to_append_stream(query, batch_type)  # a RowTypeInfo, as the keyed Python operator needs
    by_partition = keyed(batches, Types.INT())
    if fused:
        (
            by_partition.process(PartitionFunction(settings, fused=True), output_type=Types.BOOLEAN())
            .name("validate, lake, user + item features").uid("fused")
            .print()
        )
        return env
    item_updates = (
        by_partition.process(PartitionFunction(settings), output_type=Types.ROW([Types.INT(), PICKLED]))
        .name("validate, lake, user features").uid("partition")
    )
    (
        keyed(item_updates, Types.INT())
        .process(ItemShardFunction(settings), output_type=Types.BOOLEAN())
        .name("item features").uid("items")
        .print()
    )
    return env


def run_job(argv: list[str] | None, description: str, graph: Callable[[Settings, Path | None], Any],
            job_name: Callable[[Settings], str]) -> int:
    """A job's entry point (this one's, and the attribution job's): ``--config``, ``--restore``,
    the settings its runner handed over (or file + env), secrets into the environment the Python
    workers read, then the graph is built and executed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML settings file (as for recsys)")
    parser.add_argument("--restore", type=Path, help="checkpoint directory (chk-N) to resume from")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["RECSYS_CONFIG"] = args.config
    quiet_third_party_noise()
    settings = received_settings()  # exact settings of `recsys stream start` (or file + env)
    os.environ.update(secret_env(settings))  # the Python workers (and their writers) read secrets from here
    graph(settings, args.restore).execute(job_name(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(argv, __doc__, build, lambda s: s.stream.job_name)


if __name__ == "__main__":
    sys.exit(main())
