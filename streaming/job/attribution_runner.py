"""`recsys attribution start|stop|status`: run the live attribution job as a background process.

Like the feature job (streaming.job.stream_runner): a local Flink mini-cluster in its own process
group, resumed from its newest retained checkpoint unless told to start fresh (or the broker's
topics were recreated); with ``stream.jobmanager`` set it is submitted to that cluster instead.
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
from streaming.job.stream_metrics import attribution_metrics_dir, read_all
from streaming.job.stream_runner import job_dirs, newest_checkpoint

STEM = "attribution"  # run/attribution.pid, logs/attribution.log, run/attribution.settings.json


def _spec(settings: Settings, argv: list[str], known_jobs: frozenset[Path] = frozenset(),
          env: dict[str, str] | None = None) -> ServiceSpec:
    root = settings.paths.attribution_checkpoint_dir
    return ServiceSpec(name=STEM, argv=argv, host="local", port=0, binary_hint="streaming.job.attribution_job",
                       run_dir=settings.paths.run_dir, log_dir=settings.paths.log_dir,
                       ready=lambda: bool(set(job_dirs(root)) - known_jobs), cwd=Path.cwd(), env=env or {})


def start(settings: Settings, fresh: bool = False, timeout_s: float = 120.0) -> tuple[int, Path | None]:
    """Start the job in the background; returns (pid, checkpoint resumed from or None). A fresh
    start forgets its state and re-reads both topics from their earliest records (the counts in
    Redis are rebuilt from them; the lake skips rows it already holds)."""
    from streaming.attribution_counts import AttributionCounts
    from streaming.lake import topic_epoch

    running = processes.running_pid(_spec(settings, []))
    if running is not None:
        return running, None
    root = settings.paths.attribution_checkpoint_dir
    epoch_file, epoch = root / "topic_epoch", topic_epoch(settings)
    if epoch_file.exists() and epoch_file.read_text() != epoch:
        fresh = True
    restore = None if fresh else newest_checkpoint(root)
    if restore is None:
        shutil.rmtree(attribution_metrics_dir(settings), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        AttributionCounts.for_settings(settings).clear()  # counted again from the topics' start
    root.mkdir(parents=True, exist_ok=True)
    epoch_file.write_text(epoch)
    argv = [sys.executable, "-m", "streaming.job.attribution_job"] + (["--restore", str(restore)] if restore else [])
    spec = _spec(settings, argv, frozenset(job_dirs(root)), env=processes.handoff_env(settings, STEM))
    return processes.start(spec, timeout_s).pid or 0, restore


def stop(settings: Settings, timeout_s: float = 30.0, kill: bool = False) -> bool:
    return processes.stop(_spec(settings, []), timeout_s, kill)


@dataclass
class AttributionStatus:
    running: bool
    pid: int | None
    latest_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


def status(settings: Settings) -> AttributionStatus:
    pid = processes.running_pid(_spec(settings, []))
    metrics = read_all(attribution_metrics_dir(settings)).get("attribution", {})
    return AttributionStatus(pid is not None, pid, newest_checkpoint(settings.paths.attribution_checkpoint_dir), metrics)


def wait_read(settings: Settings, impressions: int, events: int, timeout_s: float = 180.0) -> dict[str, Any]:
    """Block until the job has read at least this many impression and event records."""
    deadline = time.monotonic() + timeout_s
    m: dict[str, Any] = {}
    while time.monotonic() < deadline:
        m = read_all(attribution_metrics_dir(settings)).get("attribution", {})
        if m.get("impressions_in", 0) >= impressions and m.get("events_in", 0) >= events:
            return m
        if processes.running_pid(_spec(settings, [])) is None:
            log = settings.paths.log_dir / f"{STEM}.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"the attribution job is not running (log {log}); its last lines:\n{tail}")
        time.sleep(0.25)
    raise TimeoutError(f"attribution job did not read {impressions} impressions and {events} events in {timeout_s}s: {m}")


__all__ = ["AttributionStatus", "start", "status", "stop", "wait_read"]
