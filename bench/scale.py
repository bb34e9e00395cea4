"""How each stage's cost grows with the log: the real pipeline on synthetic logs of growing size.

For each size (``--sizes``, events; users = events / 10, items = events / 50 unless given) a
fresh local stack runs the whole chain on a structured synthetic log (``streaming.synthetic_log``):

  generate -> read (validate + sort) -> replay (producer -> Kafka) -> stream (PyFlink job -> Redis +
  Delta) -> backfill (features from the lake) -> retrain (point-in-time join, lists, TorchRec,
  registry + delta) -> serve (API start + hot swap of the version, then 200 requests) -> learn (the
  online learner on one more day of events)

and records per stage: wall seconds, events/s, the peak RSS of the process doing the work (each
in-process stage runs in its own forked process; the stream job, API and learner are their own
processes), plus the lake's disk and Redis's memory after the stream stage. Each stage's growth
is the log-log slope of its seconds between the smallest and largest size: 1 is linear. Results go
to bench/RESULTS.md, one ``scale_<stage>_growth`` entry per stage in bench/results.json
(ratio = 1.15 / slope: the goal, >= 1, is "no worse than slope 1.15") and a plot in
docs/img/scale.png. Bounded: every stage has a timeout; traffic only on loopback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, command_line, local_stack, record  # noqa: E402

STAGES = ("generate", "read", "replay", "stream", "backfill", "retrain", "serve", "learn")


def _in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a forked process: its own peak RSS, and a crash is a clear error here."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def target() -> None:
        try:
            out = fn()
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            queue.put(out)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            queue.put({"error": f"{type(exc).__name__}: {exc}"})

    child = ctx.Process(target=target)
    child.start()
    while True:  # a child killed from outside (e.g. out of memory) never answers: say so
        try:
            out = queue.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty
            if not child.is_alive():
                out = {"error": f"the stage's process died (exit code {child.exitcode}; -9 is the OOM killer)"}
                break
    child.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def _tree_peak_rss_mb(pid: int) -> float:
    """Sum of the peak RSS (VmHWM) of ``pid``'s process group: a JVM and its Python workers."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pid and int(proc.name) != pid:  # field 5: the process group
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def run_size(n_events: int, users: int, items: int, days: int, workdir: Path,
             stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fill ``stages`` as each stage ends (a failing stage leaves the earlier ones there)."""
    from streaming.events import DAY_MS
    from streaming.synthetic_log import START_MS, SyntheticLog

    log_path, items_path = workdir / "events.parquet", workdir / "items.parquet"
    history_days = days - 1  # the last day is played to the online learner

    def timed(name: str, fn: Callable[[], dict[str, Any]], events: int, in_child: bool = True) -> None:
        began = time.perf_counter()
        out = _in_child(fn) if in_child else fn()
        seconds = time.perf_counter() - began
        stages[name] = {"seconds": seconds, "events": events, "events_per_s": events / seconds, **out}
        print(f"  {n_events:>11,} events | {name:<8} {seconds:8.1f} s  {events / seconds:>10,.0f} ev/s  "
              + "  ".join(f"{k} {v:,.1f}" for k, v in out.items() if isinstance(v, float)), flush=True)

    log = SyntheticLog(n_events=n_events, n_users=users, n_items=items, days=days)
    timed("generate", lambda: {"written": float(log.write(log_path, items_path)), "disk_mb": log_path.stat().st_size / 2**20},
          n_events)

    with local_stack() as base:
        from infra.processes import free_port

        settings = base.model_copy(update={"serving": base.serving.model_copy(update={"port": free_port()}),
                                           "training": base.training.model_copy(update={"validation_days": 1.0, "epochs": 1})})
        cut_ms = START_MS + history_days * DAY_MS

        def read() -> dict[str, Any]:
            from streaming.replay import load_events

            # as `recsys replay` reads it: ordered holding at most events.replay_memory_events
            with load_events(log_path, max_in_memory=settings.events.replay_memory_events,
                             spill_dir=settings.paths.spill_dir) as loaded:
                valid = sum(1 for _ in loaded.events)
            return {"valid": float(valid)}

        timed("read", read, n_events)

        def replay() -> dict[str, Any]:
            from streaming.ingest import send_events
            from streaming.producer import EventProducer
            from streaming.replay import load_events

            with load_events(log_path, max_in_memory=settings.events.replay_memory_events,
                             spill_dir=settings.paths.spill_dir) as loaded:
                began = time.perf_counter()
                history = itertools.takewhile(lambda e: e.event_time < cut_ms, loaded.events)
                with EventProducer(settings) as producer:
                    result = send_events(producer, history, show_progress=False)
            return {"acked": float(result.report.acked), "send_s": time.perf_counter() - began}

        timed("replay", replay, n_events)
        sent = int(stages["replay"]["acked"])

        from features.store import apply
        from streaming.job import stream_runner

        apply(settings)

        def stream() -> dict[str, Any]:
            pid, _ = stream_runner.start(settings, fresh=True)
            try:
                stream_runner.wait_idle(settings, sent, timeout_s=max(600.0, sent / 2000))
                peak = _tree_peak_rss_mb(pid)
            finally:
                stream_runner.stop(settings)
            import redis

            r = settings.redis
            memory = redis.Redis(host=r.host, port=r.port, password=r.secret).info("memory")["used_memory"] / 2**20
            return {"job_peak_rss_mb": peak, "redis_mb": memory, "lake_mb": _du_mb(settings.paths.events_table)}

        timed("stream", stream, sent, in_child=False)

        def backfill() -> dict[str, Any]:
            from batch import backfill as bf

            result = bf.compute(settings, progress=False)
            return {"users": float(len(result.users)), "items": float(len(result.items))}

        timed("backfill", backfill, sent)

        def retrain() -> dict[str, Any]:
            from batch.nightly import retrain as rt

            result = rt.run(settings, progress=False)
            return {"promoted": float(result.promoted), "models_mb": _du_mb(settings.paths.models_dir)}

        timed("retrain", retrain, sent)

        def serve() -> dict[str, Any]:
            import httpx

            from serving import runner

            began = time.perf_counter()
            status = runner.start(settings, timeout_s=600)
            ready_s = time.perf_counter() - began
            url = runner.base_url(settings)
            users_seen = [str(u) for u in range(0, min(users, 2000), 10)]
            latencies = []
            try:
                with httpx.Client(base_url=url, timeout=30) as client:
                    for u in (users_seen * 10)[:200]:
                        t0 = time.perf_counter()
                        client.get(f"/recommendations/{u}", params={"k": 10}).raise_for_status()
                        latencies.append((time.perf_counter() - t0) * 1000)
                peak = _tree_peak_rss_mb(status.pid)
            finally:
                runner.stop(settings)
            latencies.sort()
            return {"ready_s": ready_s, "p50_ms": latencies[len(latencies) // 2], "p99_ms": latencies[int(len(latencies) * 0.99)],
                    "api_peak_rss_mb": peak}

        timed("serve", serve, sent, in_child=False)

        def learn() -> dict[str, Any]:
            from batch.online import learn as online
            from streaming.ingest import send_events
            from streaming.producer import EventProducer
            from streaming.replay import load_events

            last_day = [e for e in load_events(log_path).events if e.event_time >= cut_ms]
            with EventProducer(settings) as producer:
                send_events(producer, last_day, show_progress=False)
            report = online.run(settings, idle_exit_s=30.0, max_events=len(last_day))  # (stops once all are trained)
            return {"trained": float(report.trained), "published": float(len(report.published))}

        timed("learn", learn, max(1, n_events - sent))
    return stages


def growth(runs: dict[int, dict[str, dict[str, Any]]], stage: str) -> float:
    sizes = sorted(n for n in runs if stage in runs[n])
    small, large = sizes[0], sizes[-1]
    a, b = runs[small][stage], runs[large][stage]
    return math.log(b["seconds"] / a["seconds"]) / math.log(b["events"] / a["events"])


def plot(runs: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, mem) = plt.subplots(1, 2, figsize=(13, 5.5))
    sizes = sorted(runs)
    for stage in STAGES:
        xs = [runs[n][stage]["events"] for n in sizes if stage in runs[n]]
        ys = [runs[n][stage]["seconds"] for n in sizes if stage in runs[n]]
        ax.plot(xs, ys, marker="o", label=f"{stage} (slope {growth(runs, stage):.2f})" if len(xs) > 1 else stage)
        peaks = [max(v for k, v in runs[n][stage].items() if "rss" in k) for n in sizes if stage in runs[n]]
        mem.plot(xs, peaks, marker="o", label=stage)
    lo, hi = min(sizes), max(sizes)
    ax.plot([lo, hi], [1, hi / lo], "k--", linewidth=0.8, label="linear (slope 1), from 1 s")
    for axis, ylabel, title in ((ax, "wall seconds", "Time per stage"), (mem, "peak RSS, MB", "Peak memory per stage")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("events the stage handles")
        axis.set_ylabel(ylabel)
        axis.set_title(f"{title} vs log size (bench/scale.py, 2 cores)")
        axis.legend(fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--plot-only", action="store_true", help="redraw docs/img/scale.png from bench/scale_runs.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((BENCH_DIR / "scale_runs.json").read_text())
        plot({int(k): v for k, v in saved.items()}, BENCH_DIR.parent / "docs" / "img" / "scale.png")
        return 0
    from infra.noise import quiet_third_party_noise

    quiet_third_party_noise()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for n in sizes:
        print(f"scale run: {n:,} events, {n // 10:,} users, {max(100, n // 50):,} items, {args.days} days", flush=True)
        runs[n] = {}
        with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
            try:
                run_size(n, n // 10, max(100, n // 50), args.days, Path(tmp), runs[n])
            except Exception as exc:  # noqa: BLE001 - recorded: the sizes and stages that ran still count
                failed = next(s for s in STAGES if s not in runs[n])
                print(f"  {n:>11,} events | {failed} failed: {exc}", flush=True)
                runs[n]["failed"] = {"stage": failed, "error": str(exc)}
        out = BENCH_DIR / "scale_runs.json"
        out.write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=2) + "\n")
    plot(runs, BENCH_DIR.parent / "docs" / "img" / "scale.png")
    if len(sizes) > 1:
        command = command_line("scale.py", parser, args)
        for stage in STAGES:
            ran = [n for n in sizes if stage in runs[n]]
            if len(ran) < 2:
                continue
            slope = growth(runs, stage)
            detail = "; ".join(f"{n:,} events: {runs[n][stage]['seconds']:.1f} s, {runs[n][stage]['events_per_s']:,.0f} ev/s, "
                               f"peak RSS {max(v for k, v in runs[n][stage].items() if 'rss' in k):,.0f} MB" for n in ran)
            detail += "".join(f"; {n:,} events: failed ({runs[n]['failed']['error']})" for n in sizes
                              if runs[n].get("failed", {}).get("stage") == stage)
            record(f"scale_{stage}_growth", value=slope, baseline=1.0, ratio=1.15 / max(slope, 1e-6),
                   unit="log-log slope of seconds vs events", goal=1.0, command=command, note=detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
