"""The local scheduler behind ``recsys schedule``: run the nightly retrain once a day.

For one machine without cron/Kubernetes/Airflow (infra/production has those forms). The job is
any callable returning an exit code; every run is appended as JSON lines to
``<data_dir>/logs/retrain-schedule.jsonl`` so a failed night is visible the next morning, and a
failure never stops the scheduler.

>>> from infra.settings import ScheduleSettings
>>> cfg = ScheduleSettings(daily_at="03:00", timezone="Europe/Berlin")
>>> next_run(cfg, datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)).isoformat()
'2026-06-02T03:00:00+02:00'
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from infra.settings import ScheduleSettings

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger(__name__)

LOG_NAME = "retrain-schedule.jsonl"
MISFIRE_GRACE_S = 3600  # a run missed while the machine slept still starts if it wakes within this


def next_run(cfg: ScheduleSettings, now: datetime) -> datetime:
    """The first ``cfg.daily_at`` in ``cfg.timezone`` strictly after ``now`` (an aware datetime).

    Compared in UTC, so it is the same once-a-day on DST change days: a time in the skipped
    spring hour moves forward by the gap (02:30 -> 03:30), and a time in the repeated autumn hour
    runs at its first occurrence only (APScheduler's CronTrigger would fire at both). The result
    is in ``cfg.timezone``; compare it in UTC there (Python's cross-zone ``==`` is False for a
    time in the repeated hour).

    >>> from infra.settings import ScheduleSettings
    >>> cfg = ScheduleSettings(daily_at="03:00", timezone="UTC")
    >>> next_run(cfg, datetime(2026, 1, 5, 2, 59, tzinfo=timezone.utc)).isoformat()
    '2026-01-05T03:00:00+00:00'
    >>> next_run(cfg, datetime(2026, 1, 5, 3, 0, tzinfo=timezone.utc)).isoformat()
    '2026-01-06T03:00:00+00:00'
    >>> berlin = ScheduleSettings(daily_at="02:30", timezone="Europe/Berlin")
    >>> next_run(berlin, datetime(2026, 3, 28, 12, 0, tzinfo=timezone.utc)).isoformat()
    '2026-03-29T03:30:00+02:00'
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("next_run needs an aware datetime (e.g. datetime.now(timezone.utc))")
    tz = ZoneInfo(cfg.timezone)
    hour, minute = (int(part) for part in cfg.daily_at.split(":"))
    now_utc = now.astimezone(timezone.utc)
    day = now_utc.astimezone(tz).date()
    while True:  # at most twice: today's time, else tomorrow's
        # fold=0: the first of a repeated time; for a skipped time, the pre-change offset
        candidate = datetime.combine(day, dtime(hour, minute), tzinfo=tz).astimezone(timezone.utc)
        if candidate > now_utc:
            return candidate.astimezone(tz)
        day += timedelta(days=1)


class DailyTrigger(BaseTrigger):
    """An APScheduler trigger firing at ``next_run`` times: the doctested rule above is what runs."""

    def __init__(self, cfg: ScheduleSettings) -> None:
        self.cfg = cfg

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        # From the previous fire time when there is one, as CronTrigger does, so APScheduler can
        # tell missed runs (coalesced into one) from the next one.
        return next_run(self.cfg, previous_fire_time or now)

    def __str__(self) -> str:
        return f"daily at {self.cfg.daily_at} {self.cfg.timezone}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class _RunLog:
    """Append-only JSON lines; one writer at a time (the job has max_instances=1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "at": _utc_now(), **fields})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _guarded(job: Callable[[], int], run_log: _RunLog, clock: Callable[[], float]) -> Callable[[], None]:
    """Wrap ``job`` so every run is logged and nothing it does can stop the scheduler."""

    def run() -> None:
        run_log.write("run_start")
        log.info("retrain started")
        t0 = clock()
        exit_code: int | None = None
        error: str | None = None
        try:
            exit_code = int(job())
        except SystemExit as e:  # a CLI main() may sys.exit(code) instead of returning it
            exit_code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # a crashed run is a logged failure, not a dead scheduler
            error = f"{type(e).__name__}: {e}"
            log.exception("retrain raised")
        duration_s = round(clock() - t0, 3)
        ok = error is None and exit_code == 0
        run_log.write("run_end", exit_code=exit_code, ok=ok, duration_s=duration_s, error=error)
        (log.info if ok else log.error)("retrain finished: exit %s in %.1fs", exit_code, duration_s)

    return run


def run_forever(
    settings: Settings,
    job: Callable[[], int],
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    trigger: BaseTrigger | None = None,
) -> None:
    """Run ``job`` daily per ``settings.schedule`` until ``stop`` is set (or Ctrl-C / SIGTERM).

    ``clock`` times the runs (monotonic seconds); ``trigger`` replaces the daily one (tests).
    Runs never overlap (max_instances=1), runs missed while asleep collapse into one, and on stop
    a run in progress is waited for, so a retrain is never cut off half-written.
    """
    cfg = settings.schedule
    trigger = trigger or DailyTrigger(cfg)
    tz = ZoneInfo(cfg.timezone)
    run_log = _RunLog(settings.paths.log_dir / LOG_NAME)
    stop = stop if stop is not None else _stop_on_signals()

    scheduler = BackgroundScheduler(
        timezone=tz,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_S},
    )
    now = datetime.now(tz)
    first = now if cfg.run_on_start else trigger.get_next_fire_time(None, now)
    run_log.write(
        "scheduler_start", trigger=str(trigger), run_on_start=cfg.run_on_start, next_run=first.isoformat()
    )
    log.info("retrain scheduled %s; next run %s", trigger, first.isoformat())
    scheduler.add_job(
        _guarded(job, run_log, clock), trigger, id="retrain", name="recsys retrain", next_run_time=first
    )
    scheduler.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping the scheduler (waiting for a run in progress)")
        scheduler.shutdown(wait=True)
        run_log.write("scheduler_stop")


def _stop_on_signals() -> threading.Event:
    """An Event that SIGTERM sets (when called on the main thread); Ctrl-C interrupts the wait."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop
