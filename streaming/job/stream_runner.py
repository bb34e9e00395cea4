"""`recsys stream start|stop|status`: run the feature job as a background process.

The job runs on a local Flink mini-cluster inside its own process (its JVM and Python workers
share the process group, so stop and kill -9 take them all). `start` resumes from the newest
retained checkpoint unless told to start fresh; with `stream.jobmanager` set, the same job is
submitted to that session cluster instead.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import processes
from infra.processes import ServiceError, ServiceSpec
from infra.settings import Settings
from streaming.job.stream_metrics import merge, metrics_dir, read_all, records_read, totals

STEM = "stream"  # run/stream.pid, logs/stream.log, run/stream.settings.json


def _spec(settings: Settings, argv: list[str], known_jobs: frozenset[Path] = frozenset(),
          env: dict[str, str] | None = None) -> ServiceSpec:
    paths = settings.paths
    return ServiceSpec(
        name=STEM,
        argv=argv,
        host="local",
        port=0,
        binary_hint="streaming.job.feature_job",
        run_dir=paths.run_dir,
        log_dir=paths.log_dir,
        ready=lambda: bool(set(_job_dirs(settings)) - known_jobs),  # Flink created the new job's checkpoint dir
        cwd=Path.cwd(),
        env=env or {},
    )


def job_dirs(root: Path) -> list[Path]:
    """The job directories Flink created under a checkpoint root (one per job started)."""
    return [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []


def _job_dirs(settings: Settings) -> list[Path]:
    return job_dirs(settings.paths.checkpoint_dir)


def newest_checkpoint(root: Path) -> Path | None:
    """The newest complete retained checkpoint under ``root`` (a chk-N directory with _metadata)."""
    found = [m.parent for d in job_dirs(root) for m in d.glob("chk-*/_metadata")]
    return max(found, key=lambda p: p.joinpath("_metadata").stat().st_mtime) if found else None


def latest_checkpoint(settings: Settings) -> Path | None:
    """The feature job's newest complete retained checkpoint."""
    return newest_checkpoint(settings.paths.checkpoint_dir)


def start(settings: Settings, fresh: bool = False, timeout_s: float = 120.0) -> tuple[int, Path | None]:
    """Start the job in the background; returns (pid, checkpoint resumed from or None).

    It resumes from the newest checkpoint taken on the same topic incarnation (see
    ``stream.topic_epoch``). A fresh start forgets feature state and re-reads the topic from its
    earliest record (the lake drops rows it already holds), so state is rebuilt, not guessed.
    """
    from features.store import registered_views
    from streaming.lake import topic_epoch

    registered_views(settings)
    running = processes.running_pid(_spec(settings, []))
    if running is not None:
        return running, None  # already running: starting is idempotent
    epoch_file = settings.paths.checkpoint_dir / "topic_epoch"
    epoch = topic_epoch(settings)
    if epoch_file.exists() and epoch_file.read_text() != epoch:
        fresh = True  # the topic was recreated (e.g. a new in-memory broker): old state does not apply
    restore = None if fresh else latest_checkpoint(settings)
    if restore is None:
        shutil.rmtree(metrics_dir(settings), ignore_errors=True)
        shutil.rmtree(settings.paths.checkpoint_dir, ignore_errors=True)
    settings.paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    epoch_file.write_text(epoch)
    argv = [sys.executable, "-m", "streaming.job.feature_job"]
    if restore is not None:
        argv += ["--restore", str(restore)]
    env = processes.handoff_env(settings, STEM)  # the job runs with exactly these settings
    if settings.stream.parallelism > 1 and not settings.stream.jobmanager:
        # PyFlink runs a local job's Python functions as threads of this one process ("loopback"),
        # so several subtasks would share one GIL; "process" gives each its own interpreter, as on
        # a cluster (at parallelism 1, loopback saves a process and is as fast)
        env["_python_worker_execution_mode"] = "process"
    spec = _spec(settings, argv, frozenset(_job_dirs(settings)), env=env)
    status = processes.start(spec, timeout_s)
    return status.pid or 0, restore


def stop(settings: Settings, timeout_s: float = 30.0, kill: bool = False) -> bool:
    """Stop the job (SIGTERM to its process group; SIGKILL with ``kill`` or after the timeout)."""
    return processes.stop(_spec(settings, []), timeout_s, kill)


@dataclass
class StreamStatus:
    running: bool
    pid: int | None
    latest_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    lag: dict[int, int] = field(default_factory=dict)


def status(settings: Settings, with_lag: bool = True) -> StreamStatus:
    pid = processes.running_pid(_spec(settings, []))
    metrics = totals(metrics_dir(settings))
    lag: dict[int, int] = {}
    if with_lag:
        lag = _lag(settings, metrics)
    return StreamStatus(pid is not None, pid, latest_checkpoint(settings), metrics, lag)


def _lag(settings: Settings, metrics: dict[str, Any]) -> dict[int, int]:
    """Records in the topic not yet read by the job, per partition (approximate on Tansu)."""
    from kafka import TopicPartition

    from infra import kafka_clients

    try:
        consumer = kafka_clients.consumer(settings, "lag", request_timeout_ms=5000)
    except Exception:  # noqa: BLE001 - broker down: no lag to report
        return {}
    try:
        parts = consumer.partitions_for_topic(settings.topics.events) or set()
        ends = consumer.end_offsets([TopicPartition(settings.topics.events, p) for p in parts])
        return {tp.partition: max(0, end - int(metrics.get(f"offset_p{tp.partition}", -1)) - 1) for tp, end in ends.items()}
    finally:
        consumer.close()


def expected_functions(settings: Settings) -> int:
    """Python function instances of the job graph (streaming.job.feature_job.build): one fused
    function at parallelism 1, else a partition and an item stage per subtask."""
    p = settings.stream.parallelism
    return 1 if p == 1 else 2 * p


def functions_open(settings: Settings, instances: dict[str, dict[str, Any]]) -> int:
    """Function instances (of ``read_all(metrics_dir)``) that finished opening since the job last
    started (their ``opened_at``); a later stage can still be opening (starting its writer
    process) when the first looks idle."""
    started = processes.settings_file(settings, STEM)  # written by every start
    since = started.stat().st_mtime if started.exists() else 0.0
    return sum(1 for name, m in instances.items() if not name.startswith("writer-") and m.get("opened_at", 0) >= since)


def wait_idle(settings: Settings, expected_events: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Block until the job has read ``expected_events`` records of a fresh topic and gone quiet.

    Read position is the sum over partitions of (last offset + 1), so it also holds across a
    restart; quiet means no metrics update for longer than the lake flush interval.
    """
    quiet_s = settings.stream.lake_flush_ms / 1000 + 1.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        instances = read_all(metrics_dir(settings))
        m = merge(instances.values())
        if (records_read(m) >= expected_events and time.time() - m.get("updated_at", 0) >= quiet_s
                and functions_open(settings, instances) >= expected_functions(settings)):
            return m
        if processes.running_pid(_spec(settings, [])) is None:
            log = settings.paths.log_dir / "stream.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise ServiceError(f"the stream job is not running (log {log}); its last lines:\n{tail}")
        time.sleep(0.25)
    raise TimeoutError(f"stream job did not read {expected_events} events in {timeout_s}s: {totals(metrics_dir(settings))}")
