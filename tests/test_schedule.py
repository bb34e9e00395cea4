"""The nightly-retrain scheduler (infra.schedule) and the production schedule files."""

from __future__ import annotations

import doctest
import itertools
import json
import py_compile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from apscheduler.triggers.interval import IntervalTrigger

import infra.schedule
from infra.schedule import DailyTrigger, next_run, run_forever
from infra.settings import ScheduleSettings, Settings

PRODUCTION = Path(__file__).resolve().parents[1] / "infra" / "production"
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def in_utc(d: datetime) -> datetime:
    """Compare in UTC: Python's cross-zone == is False for a time in the repeated autumn hour."""
    return d.astimezone(UTC)


def elapsed(a: datetime, b: datetime) -> timedelta:
    """Real time between two instants (same-zone subtraction in Python is wall-clock time)."""
    return b.astimezone(UTC) - a.astimezone(UTC)


def test_doctests() -> None:
    result = doctest.testmod(infra.schedule)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("daily_at", "tz", "now", "expected"),
    [
        ("03:00", "UTC", utc(2026, 5, 4, 1, 0), utc(2026, 5, 4, 3, 0)),  # later today
        ("03:00", "UTC", utc(2026, 5, 4, 3, 0), utc(2026, 5, 5, 3, 0)),  # strictly after
        ("03:00", "UTC", utc(2026, 5, 4, 9, 0), utc(2026, 5, 5, 3, 0)),  # tomorrow
        ("23:30", "UTC", utc(2026, 12, 31, 23, 45), utc(2027, 1, 1, 23, 30)),  # year end
        # Berlin in summer is UTC+2: 03:00 local is 01:00 UTC
        ("03:00", "Europe/Berlin", utc(2026, 7, 1, 0, 30), utc(2026, 7, 1, 1, 0)),
        ("03:00", "Europe/Berlin", utc(2026, 7, 1, 1, 30), utc(2026, 7, 2, 1, 0)),
        # 22:00 UTC is already tomorrow in Tokyo (UTC+9): the next 08:00 there is 23:00 UTC
        ("08:00", "Asia/Tokyo", utc(2026, 7, 1, 22, 0), utc(2026, 7, 1, 23, 0)),
        # New York (UTC-4 in summer): 02:00 UTC is still yesterday evening there
        ("23:00", "America/New_York", utc(2026, 7, 2, 2, 0), utc(2026, 7, 2, 3, 0)),
    ],
)
def test_next_run(daily_at: str, tz: str, now: datetime, expected: datetime) -> None:
    got = next_run(ScheduleSettings(daily_at=daily_at, timezone=tz), now)
    assert got.astimezone(UTC) == expected
    assert got.tzinfo == ZoneInfo(tz)  # reported in the schedule's own zone


def test_next_run_across_spring_forward() -> None:
    """Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST."""
    cfg = ScheduleSettings(daily_at="03:00", timezone="Europe/Berlin")
    before = next_run(cfg, utc(2026, 3, 28, 12, 0))
    assert in_utc(before) == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert before.isoformat() == "2026-03-29T03:00:00+02:00"
    assert elapsed(next_run(cfg, utc(2026, 3, 27, 12, 0)), before) == timedelta(hours=23)
    assert elapsed(before, next_run(cfg, before)) == timedelta(hours=24)

    skipped = ScheduleSettings(daily_at="02:30", timezone="Europe/Berlin")  # does not exist that day
    assert in_utc(next_run(skipped, utc(2026, 3, 28, 12, 0))) == utc(2026, 3, 29, 1, 30)  # 03:30 CEST
    assert in_utc(next_run(skipped, utc(2026, 3, 29, 1, 30))) == utc(2026, 3, 30, 0, 30)  # back to 02:30


def test_next_run_across_fall_back() -> None:
    """Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET, so 02:00-02:59 happens twice."""
    cfg = ScheduleSettings(daily_at="03:00", timezone="Europe/Berlin")
    first = next_run(cfg, utc(2026, 10, 24, 12, 0))
    assert first.isoformat() == "2026-10-25T03:00:00+01:00"
    assert elapsed(next_run(cfg, utc(2026, 10, 23, 12, 0)), first) == timedelta(hours=25)

    repeated = ScheduleSettings(daily_at="02:30", timezone="Europe/Berlin")
    once = next_run(repeated, utc(2026, 10, 24, 12, 0))
    assert in_utc(once) == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert once.isoformat() == "2026-10-25T02:30:00+02:00"
    # after the first, between the two 02:30s, and after the second: tomorrow, not again tonight
    assert in_utc(next_run(repeated, once)) == utc(2026, 10, 26, 1, 30)
    assert in_utc(next_run(repeated, utc(2026, 10, 25, 1, 0))) == utc(2026, 10, 26, 1, 30)
    assert in_utc(next_run(repeated, utc(2026, 10, 25, 1, 45))) == utc(2026, 10, 26, 1, 30)


def test_next_run_needs_aware_now() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_run(ScheduleSettings(), datetime(2026, 1, 1, 12, 0))


def test_daily_trigger_follows_next_run() -> None:
    cfg = ScheduleSettings(daily_at="03:00", timezone="Europe/Berlin")
    trigger = DailyTrigger(cfg)
    now = utc(2026, 3, 27, 12, 0)
    fire = trigger.get_next_fire_time(None, now)
    fires = [fire]
    for _ in range(3):
        fire = trigger.get_next_fire_time(fire, now)
        fires.append(fire)
    assert [f.astimezone(BERLIN).strftime("%m-%d %H:%M") for f in fires] == [
        "03-28 03:00", "03-29 03:00", "03-30 03:00", "03-31 03:00"
    ]


def read_log(settings: Settings) -> list[dict]:
    path = settings.paths.log_dir / "retrain-schedule.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def stepping_clock(step: float):
    """A fake monotonic clock advancing ``step`` per call: each run lasts exactly ``step``."""
    ticks = itertools.count(0.0, step)
    return lambda: next(ticks)


def watchdog(stop: threading.Event, seconds: float = 20.0) -> threading.Timer:
    """Stop the scheduler anyway if a test's own stop never comes (a failing test, not a hang)."""
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return timer


def test_run_forever_logs_failures_and_keeps_going(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, schedule={"run_on_start": True})
    stop = threading.Event()
    outcomes = iter([1, RuntimeError("lake unreachable"), 0])
    calls: list[float] = []

    def job() -> int:
        calls.append(1)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome == 0:
            stop.set()  # the third run succeeds and ends the test
        return outcome

    timer = watchdog(stop)
    # run_on_start fires at once; the interval stands in for "the next night"
    run_forever(settings, job, stop, clock=stepping_clock(2.5), trigger=IntervalTrigger(seconds=0.2))
    timer.cancel()

    assert len(calls) == 3
    lines = read_log(settings)
    assert [line["event"] for line in lines] == [
        "scheduler_start",
        "run_start", "run_end",
        "run_start", "run_end",
        "run_start", "run_end",
        "scheduler_stop",
    ]
    assert lines[0]["run_on_start"] is True
    ends = [line for line in lines if line["event"] == "run_end"]
    assert [e["exit_code"] for e in ends] == [1, None, 0]
    assert [e["ok"] for e in ends] == [False, False, True]
    assert [e["duration_s"] for e in ends] == [2.5, 2.5, 2.5]
    assert ends[0]["error"] is None and ends[2]["error"] is None
    assert ends[1]["error"] == "RuntimeError: lake unreachable"
    assert all(datetime.fromisoformat(line["at"]).tzinfo is not None for line in lines)


def test_run_forever_daily_waits_for_the_time(tmp_path: Path) -> None:
    """Without run_on_start nothing runs before daily_at; the log says when the next run is."""
    settings = Settings(data_dir=tmp_path, schedule={"daily_at": "03:00", "timezone": "Asia/Tokyo"})
    stop = threading.Event()
    calls: list[int] = []
    threading.Timer(0.3, stop.set).start()
    before = datetime.now(UTC)
    run_forever(settings, lambda: calls.append(1) or 0, stop)
    assert calls == []
    lines = read_log(settings)
    assert [line["event"] for line in lines] == ["scheduler_start", "scheduler_stop"]
    scheduled = datetime.fromisoformat(lines[0]["next_run"])
    assert scheduled == next_run(settings.schedule, before)
    assert scheduled.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%H:%M") == "03:00"


def test_run_forever_takes_a_sys_exit_code(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, schedule={"run_on_start": True})
    stop = threading.Event()

    def job() -> int:
        stop.set()
        raise SystemExit(3)  # e.g. a CLI main() that exits instead of returning

    timer = watchdog(stop)
    run_forever(settings, job, stop)
    timer.cancel()
    (end,) = [line for line in read_log(settings) if line["event"] == "run_end"]
    assert end["exit_code"] == 3 and end["ok"] is False
    assert 0 <= end["duration_s"] < 20


def test_k8s_cronjob_manifest() -> None:
    docs = list(yaml.safe_load_all((PRODUCTION / "k8s" / "retrain-cronjob.yaml").read_text()))
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["recsys", "retrain"]
    # the image is the one the other manifests build for this project
    assert container["image"] in (PRODUCTION / "k8s" / "flink-session.yaml").read_text()
    # the ConfigMap's recsys.yaml is a valid engine configuration
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    settings = Settings(**yaml.safe_load(config["data"]["recsys.yaml"]))
    assert str(settings.data_dir) == "/data" and not settings.broker.managed


def test_crontab_runs_retrain_with_a_lock() -> None:
    jobs = [
        line for line in (PRODUCTION / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    (line,) = jobs
    assert line.split()[:5] == ["0", "3", "*", "*", "*"]
    assert "recsys retrain" in line and "flock" in line


def test_airflow_dag_compiles(tmp_path: Path) -> None:
    source = PRODUCTION / "airflow" / "recsys_retrain_dag.py"
    py_compile.compile(str(source), cfile=str(tmp_path / "dag.pyc"), doraise=True)
    text = source.read_text()
    assert '"0 3 * * *"' in text and "catchup=False" in text and "max_active_runs=1" in text
