"""What the candidate ranker costs the nightly retrain, on ml-100k in the real lake and registry.

The same stack and events; `recsys retrain` (``batch.nightly.retrain.run``) timed with the default recipe
(training lists folded with the similarity table, point-in-time join of 20,000 lists x 251 rows,
the ranker's fit and its full-catalogue evaluation) and with ``ranker.enabled=false`` (the
TorchRec model alone: the recipe before issue 19), alternating, best of ``--repeats`` each.
Records nightly_retrain_with_ranker_within_2x = 2 x seconds without ÷ seconds with (issue 19:
the retrain may take at most twice what it took before; goal >= 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, record, served_stack  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from infra.noise import quiet_third_party_noise

    quiet_third_party_noise()
    from batch.nightly import retrain

    seconds: dict[str, list[float]] = {"with": [], "without": []}
    with served_stack() as settings:  # (its own first retrain warms the caches and the lake)
        recipes = {"with": settings,
                   "without": settings.model_copy(update={"ranker": settings.ranker.model_copy(update={"enabled": False})})}
        for i in range(args.repeats):
            for name, s in recipes.items():
                began = time.perf_counter()
                retrain.run(s, progress=False, promote=False)
                seconds[name].append(time.perf_counter() - began)
                print(f"run {i + 1}: {name} the ranker {seconds[name][-1]:.1f} s", flush=True)
    with_s, without_s = min(seconds["with"]), min(seconds["without"])
    record("nightly_retrain_with_ranker_within_2x", value=with_s, baseline=without_s, ratio=2 * without_s / with_s,
           unit="s per retrain", goal=1.0, command=command_line("retrain_cost.py", parser, args),
           note=(f"ml-100k (100,000 events) in the lake; best of {args.repeats}: default recipe {with_s:.1f} s vs "
                 f"ranker.enabled=false {without_s:.1f} s ({with_s / without_s:.2f}x); all runs {seconds}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
