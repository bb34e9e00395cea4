"""Hot swap under load: 5 deltas merged and swapped while the API serves a steady 300 rps.

The API runs as its own process; the load generator (bench/loadgen.py, open loop) in another.
Versions come from models.synthetic (served weights nudged, published with a delta), promoted
one every ``--every`` seconds. Records hot_swap_zero_failures (1 if no request failed) and
hot_swap_p99_vs_steady = 2 / (p99 during swaps / p99 steady state) (goal 1, i.e. < 2x), with
the merge-and-swap time in the note.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, command_line, record, served_stack  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between promotions")
    parser.add_argument("--steady", type=float, default=8.0, help="seconds of steady state before the first swap")
    args = parser.parse_args()
    import httpx

    from models.registry import ModelRegistry
    from models.synthetic import publish_nudged_version
    from serving import runner
    from streaming.replay import load_events

    with served_stack() as settings:
        runner.start(settings)
        try:
            url = runner.base_url(settings)
            registry = ModelRegistry(settings.paths.models_dir)
            users = sorted({e.user_id for e in load_events(settings.ml100k_path).events})
            versions: list[str] = []
            subprocess.run([sys.executable, "-m", "bench.loadgen", "--url", url, "--rate", "100", "--seconds", "3",
                            "--users", ",".join(users)], cwd=BENCH_DIR.parent, capture_output=True, check=True)
            seconds = args.steady + args.swaps * args.every + 3
            gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", "--url", url, "--rate", str(args.rate),
                                    "--seconds", str(seconds), "--users", ",".join(users)], cwd=BENCH_DIR.parent,
                                   stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic() + 0.5  # the generator's own start offset, roughly
            time.sleep(args.steady + 0.5)
            swap_start = time.monotonic() - t0
            for seed in range(args.swaps):
                v = publish_nudged_version(registry, seed)  # a delta from the version being served
                versions.append(v)
                registry.promote(v)
                deadline = time.monotonic() + 30
                while httpx.get(url + "/model", timeout=5).json()["served"]["version"] != v and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(args.every)
            swap_end = time.monotonic() - t0
            out = json.loads(gen.communicate(timeout=120)[0])
            model = httpx.get(url + "/model", timeout=5).json()
        finally:
            runner.stop(settings)
    samples = np.array([(s, ms) for s, ms, _ in out["samples"] if ms is not None])
    steady = samples[(samples[:, 0] >= 1.0) & (samples[:, 0] < swap_start), 1]
    during = samples[(samples[:, 0] >= swap_start) & (samples[:, 0] < swap_end), 1]
    p99_steady, p99_during = float(np.percentile(steady, 99)), float(np.percentile(during, 99))
    swaps = [e for e in model["swaps"] if e["version"] in versions]
    outcomes = [e["outcome"] for e in swaps]
    swap_ms = [e["ms"] for e in swaps]
    print(f"{out['requests']} requests at {args.rate} rps, {out['failed']} failed; p99 steady {p99_steady:.1f} ms, "
          f"during swaps {p99_during:.1f} ms; swaps {outcomes}, merge+check+swap {np.median(swap_ms):.0f} ms median")
    command = command_line("hot_swap.py", parser, args)
    note = f"{args.swaps} swaps ({', '.join(outcomes)}), merge+check+swap median {np.median(swap_ms):.0f} ms, max {max(swap_ms):.0f} ms"
    record("hot_swap_zero_failures", value=out["failed"], baseline=0, ratio=1.0 if out["failed"] == 0 else 0.0,
           unit="failed requests", goal=1, command=command, note=f"{out['requests']} requests at {args.rate} rps; {note}")
    record("hot_swap_p99_vs_steady", value=p99_during, baseline=p99_steady, ratio=2 * p99_steady / p99_during,
           unit="ms p99", goal=1, command=command, note=f"goal: p99 during swaps < 2x steady; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
