"""What logging every served list costs a request: /recommendations p99 at 300 rps, without / with.

The same API process setup as bench/recommend_latency.py (ml-100k features in Redis, a trained
model, `recsys serve start`, the open-loop load generator in another process), started in turn
with ``serving.impressions`` off and on (A/B/A/B..., so drift on the box hits both alike). Records
impression_logging_p99_overhead = p99 without / p99 with (median of the rounds after a warm-up pair; goal >= 0.9) and
checks that the log sent every list it served while the broker was up.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, record, served_stack  # noqa: E402
from bench.recommend_latency import load  # noqa: E402

RATE = 300


def impressions_counted(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'recsys_impressions_total\{outcome="(\w+)"\} (\S+)', text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=6, help="A/B pairs")
    parser.add_argument("--warmup-rounds", type=int, default=1,
                        help="A/B pairs run first and not counted (the first API start after the retrain is slow)")
    args = parser.parse_args()
    from serving import runner
    from streaming.replay import load_events

    p99 = {False: [], True: []}
    lost = 0.0
    served_with_log = 0
    with served_stack() as base:
        users = sorted({e.user_id for e in load_events(base.ml100k_path).events})
        users += [f"new-user-{i}" for i in range(len(users) // 20)]
        for n in range(args.warmup_rounds + args.rounds):
            counted_round = n >= args.warmup_rounds
            for logging_on in (False, True):
                settings = base.model_copy(update={"serving": base.serving.model_copy(update={"impressions": logging_on})})
                runner.start(settings)
                try:
                    url = runner.base_url(settings)
                    load(url, 100, 3, users)  # warm-up
                    r = load(url, RATE, args.seconds, users)
                    counted = impressions_counted(url)
                finally:
                    runner.stop(settings)  # stopping sends what is buffered
                print(f"{'round ' + str(n + 1 - args.warmup_rounds) if counted_round else 'warm-up'}, impressions "
                      f"{'on ' if logging_on else 'off'}: {r['throughput']:.0f} ok/s, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, {r['failed']} failed; log {counted}", flush=True)
                if not counted_round:
                    continue
                p99[logging_on].append(r["p99_ms"])
                if logging_on:
                    served_with_log += int(r["throughput"] * args.seconds)
                    lost += counted.get("dropped_buffer_full", 0) + counted.get("dropped_send_failed", 0)
    off, on = statistics.median(p99[False]), statistics.median(p99[True])
    note = (f"{RATE} rps, {args.rounds} A/B rounds of {args.seconds:g} s after {args.warmup_rounds} not counted; p99 without "
            f"{[round(v, 1) for v in p99[False]]}, with {[round(v, 1) for v in p99[True]]} ms; "
            f"impressions lost while the broker was up: {lost:.0f} of ~{served_with_log:,} lists")
    record("impression_logging_p99_overhead", value=on, baseline=off, ratio=off / on, unit="ms p99", goal=0.9,
           command=command_line("impression_logging.py", parser, args), note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
