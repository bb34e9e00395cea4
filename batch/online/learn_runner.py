"""`recsys learn start|stop|status`: the streaming trainer as a background process.

The process gets exactly the caller's settings (infra.processes.handoff_env), writes what it is doing to
``run/learn.json`` (position, last published version, counts; after start and every batch), and
on SIGTERM (``stop``) publishes what it trained before exiting, so stopping loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from infra import processes
from infra.processes import ServiceSpec
from infra.settings import Settings

STEM = "learn"  # run/learn.pid, logs/learn.log, run/learn.settings.json, run/learn.json


def status_file(settings: Settings) -> Path:
    return settings.paths.run_dir / f"{STEM}.json"


def _spec(settings: Settings, env: dict[str, str] | None = None, launched: float = 0.0) -> ServiceSpec:
    f = status_file(settings)
    return ServiceSpec(name=STEM, argv=[sys.executable, "-m", "batch.online.learn_runner"], host="local", port=0,
                       binary_hint="batch.online.learn_runner", run_dir=settings.paths.run_dir, log_dir=settings.paths.log_dir,
                       ready=lambda: f.is_file() and f.stat().st_mtime >= launched, cwd=Path.cwd(), env=env or {})


def start(settings: Settings, timeout_s: float = 300.0) -> int:
    """Start the learner in the background (idempotent); returns its pid once it has loaded the
    served version and knows its position."""
    running = processes.running_pid(_spec(settings))
    if running is not None:
        return running
    launched = time.time()
    return processes.start(_spec(settings, processes.handoff_env(settings, STEM), launched), timeout_s).pid or 0


def stop(settings: Settings, timeout_s: float = 60.0) -> bool:
    """SIGTERM: the learner publishes what it trained, then exits (SIGKILL after ``timeout_s``)."""
    return processes.stop(_spec(settings), timeout_s)


def running_pid(settings: Settings) -> int | None:
    return processes.running_pid(_spec(settings))


def read_status(settings: Settings) -> dict | None:
    f = status_file(settings)
    return json.loads(f.read_text()) if f.is_file() else None


def main() -> int:
    from infra.noise import quiet_third_party_noise

    quiet_third_party_noise()
    from batch.online import learn
    from batch.online.online_learner import OnlineLearner

    settings = processes.received_settings()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    learner = OnlineLearner(settings)
    totals = {"published": 0, "events": 0}

    def write(state: str) -> None:
        f = status_file(settings)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "state": state, "version": learner.version,
                                   "offsets": learner.position.to_meta(), "published": totals["published"],
                                   "events_published": totals["events"], "late_skipped": learner.late_skipped,
                                   "started_from": getattr(learner, "started_from", None),
                                   "updated_at": time.time()}))
        os.replace(tmp, f)

    def published(result) -> None:  # noqa: ANN001 - batch.online.online_learner.PublishResult
        totals["published"] += 1
        totals["events"] += result.events
        write("running")
        print(f"{result.version}: {result.events} events, {result.examples} examples ({result.ms:.0f} ms)", flush=True)

    learn.run(settings, stop=stopping.is_set, on_publish=published, on_progress=lambda: write("running"), learner=learner)
    write("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
