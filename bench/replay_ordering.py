"""Bounded-memory ordering of a replay file vs sorting it whole in memory (#21 part 2).

A shuffled CSV of N events (default 1M, ``user,item,behaviour,timestamp``, no header) is read
in a fresh process each way: ``load_events`` into one sorted list (the baseline), and with
``max_in_memory`` (default 100k: runs on disk, k-way merged) iterated to the end. Records

- ``replay_ordering_peak_rss_vs_in_memory``: peak RSS in memory / peak RSS bounded (goal 2);
- ``replay_ordering_time_vs_in_memory``: seconds in memory / seconds bounded (goal 0.5: the
  external sort may cost up to twice the in-memory one).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, record  # noqa: E402

COLUMNS = {"user_id": "0", "item_id": "1", "event_type": "2", "event_time": "3"}


def write_log(path: Path, events: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.2, events) % 1_000_000
    items = rng.zipf(1.1, events) % 200_000
    times = 1_511_000_000 + rng.permutation(events) * (30 * 86_400) // events  # 30 days, shuffled
    kinds = np.array(["pv", "cart", "fav", "buy"])[rng.choice(4, events, p=[0.85, 0.07, 0.05, 0.03])]
    with path.open("w") as out:
        for start in range(0, events, 100_000):
            stop = min(start + 100_000, events)
            out.write("".join(f"{u},{i},{k},{t}\n" for u, i, k, t in
                              zip(users[start:stop], items[start:stop], kinds[start:stop], times[start:stop])))


def child(path: Path, max_in_memory: int | None) -> None:
    """One way of ordering, in this fresh process: prints seconds, peak RSS and a checksum."""
    from streaming.replay import load_events
    from streaming.vocabulary import parse_event_types

    start = time.perf_counter()
    with load_events(path, columns=COLUMNS, aliases=parse_event_types("pv=view,cart=add_to_cart,fav=like,buy=purchase"),
                     max_in_memory=max_in_memory, spill_dir=path.parent / "spill") as loaded:
        last, count, in_order = -1, 0, True
        for event in loaded.events:
            in_order &= event.event_time >= last
            last, count = event.event_time, count + 1
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "events": count, "in_order": in_order}))


def run_child(path: Path, max_in_memory: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path)] + ([] if max_in_memory is None else ["--max-in-memory", str(max_in_memory)])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--max-in-memory", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.max_in_memory if "--max-in-memory" in sys.argv else None)
        return
    with tempfile.TemporaryDirectory(prefix="replay-ordering-") as tmp:
        log = Path(tmp) / "behaviour.csv"
        write_log(log, args.events)
        whole = run_child(log, None)
        bounded = run_child(log, args.max_in_memory)
    assert whole["events"] == bounded["events"] == args.events and whole["in_order"] and bounded["in_order"]
    print(f"in memory: {whole}\nbounded:   {bounded}")
    command = command_line("replay_ordering.py", parser, args)
    note = f"{args.events:,} shuffled events, bound {args.max_in_memory:,}"
    record("replay_ordering_peak_rss_vs_in_memory", value=bounded["peak_rss_mb"], baseline=whole["peak_rss_mb"],
           ratio=whole["peak_rss_mb"] / bounded["peak_rss_mb"], unit="MB", goal=2, command=command, note=note)
    record("replay_ordering_time_vs_in_memory", value=bounded["seconds"], baseline=whole["seconds"],
           ratio=whole["seconds"] / bounded["seconds"], unit="s", goal=0.5, command=command, note=note)


if __name__ == "__main__":
    main()
