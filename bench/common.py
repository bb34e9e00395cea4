"""Shared bench plumbing: a throwaway local stack and result recording as shared/BENCH.md says."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Iterator

from infra import services
from infra.processes import free_port
from infra.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent


@contextmanager
def local_stack() -> Iterator[Settings]:
    """Start broker + Redis on free ports under a temp dir, the same way the tests do."""
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), broker={"port": free_port()}, redis={"port": free_port()})
        services.up(settings)
        try:
            yield settings
        finally:
            services.down(settings)


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.machine()}"


def box_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (every process: broker, JVM,
    Python workers, Redis), from /proc/stat; None where there is none. The difference over a
    timed span, divided by the events in it, is the box's CPU cost per event: what the cores can
    sustain at all, whatever the split between processes."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def command_line(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """How to re-run this measurement: the script plus every option that differs from its default."""
    return f"python bench/{script}" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != parser.get_default(k))


def record(name: str, *, value: float, baseline: float, ratio: float, unit: str, goal: float, command: str, note: str = "") -> None:
    """Append a line to bench/RESULTS.md and update bench/results.json (ratio: bigger is better)."""
    today = date.today().isoformat()
    results_path = BENCH_DIR / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[name] = {
        "value": round(value, 3),
        "baseline": round(baseline, 3),
        "ratio": round(ratio, 3),
        "unit": unit,
        "goal": goal,
        "measured_at": today,
        "command": command,
    }
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    md = BENCH_DIR / "RESULTS.md"
    if not md.exists():
        md.write_text("# Benchmark results\n\nOne line per run: date, machine, command, numbers, ratio (bigger is better).\n\n")
    verdict = "meets" if ratio >= goal else "MISSES"
    with md.open("a") as fh:
        fh.write(
            f"- {today} | {machine()} | `{command}` | {name}: ours {value:,.1f} {unit}, "
            f"baseline {baseline:,.1f} {unit}, ratio {ratio:.3f} ({verdict} goal {goal}){' | ' + note if note else ''}\n"
        )


@contextmanager
def served_stack(events: int | None = None) -> Iterator[Settings]:
    """A local stack with ml-100k (or its first ``events``) in the lake and the online store, a
    trained and promoted model, and a free port for the API (start it with serving.runner)."""
    from batch import backfill
    from batch.nightly import retrain
    from features.store import apply
    from streaming.lake import append_events
    from streaming.replay import load_events

    with local_stack() as base:
        settings = base.model_copy(update={
            "ml100k_path": (BENCH_DIR.parent / ".." / "shared" / "data" / "ml-100k" / "u.data").resolve(),
            "serving": base.serving.model_copy(update={"port": free_port()})})
        apply(settings)
        loaded = load_events(settings.ml100k_path).events[:events]
        append_events(settings, loaded)
        backfill.write_online(settings, backfill.compute(settings, progress=False))
        retrain.run(settings, progress=False)
        yield settings
