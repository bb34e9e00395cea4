"""Does the rollout guard catch a worse version, and leave an equal one alone? Over many seeds.

Synthetic traffic (serving.guard_simulation) with the default rollout settings: the canary serves
``rollout.canary_share`` of users; its true hit rate is 20% below the control's (degraded) or
equal (A/A). The guard reads the counts every 100 lists. For each base hit rate the script counts
the seeds where the degraded canary is rolled back within ``rollout.budget_lists`` canary lists,
and the A/A seeds rolled back at all (false rollbacks). Baseline in the same run: the naive
guard that reads a fixed one-sided interval at every check (peeking).

Records guard_detects_degraded_version = the lowest catch share over the base rates, or 0 when
any A/A false-rollback share is above 5%; goal >= 0.95. Plot: docs/img/rollout_guard.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GAP = 0.2  # the degraded canary's relative drop of hit rate
FALSE_ROLLBACK_BOUND = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--base-rates", type=float, nargs="+", default=[0.1, 0.2, 0.3],
                        help="control hit rates (share of lists with an engaged item)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "rollout_guard.png")
    args = parser.parse_args()
    import numpy as np
    from rich.console import Console
    from rich.progress import track

    from infra.settings import RolloutSettings
    from serving.guard_simulation import peeking_rolls_back, simulate

    console = Console()
    s = RolloutSettings()
    rows = []
    for p in args.base_rates:
        degraded = [simulate(p, (1 - GAP) * p, s, seed) for seed in track(range(args.seeds), f"hit rate {p}: degraded")]
        equal = [simulate(p, p, s, 1_000_000 + seed) for seed in track(range(args.seeds), f"hit rate {p}: A/A")]
        naive_false = np.mean([peeking_rolls_back(p, p, s, 1_000_000 + seed) for seed in range(args.seeds)])
        caught = [r.canary_lists for r in degraded if r.action == "rollback" and r.canary_lists <= s.budget_lists]
        rows.append({"p": p, "caught": len(caught) / args.seeds, "lists": caught,
                     "false": float(np.mean([r.action == "rollback" for r in equal])),
                     "promoted_equal": float(np.mean([r.action == "promote" for r in equal])),
                     "naive_false": float(naive_false)})
        r = rows[-1]
        console.print(f"hit rate {p}: degraded caught {r['caught']:.3f} (median {np.median(caught or [0]):.0f} canary lists), "
                      f"A/A false rollbacks {r['false']:.3f}, A/A promoted {r['promoted_equal']:.3f}; "
                      f"naive peeking A/A false rollbacks {r['naive_false']:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        xs = np.sort(r["lists"])
        ax.step(xs, np.arange(1, len(xs) + 1) / args.seeds, where="post", label=f"control hit rate {r['p']}")
    ax.axvline(s.budget_lists, color="grey", linestyle="--", label="rollout.budget_lists")
    ax.axhline(0.95, color="grey", linestyle=":")
    ax.set_xlabel("canary lists attributed")
    ax.set_ylabel("share of seeds rolled back")
    ax.set_title(f"A canary {GAP:.0%} worse, canary share {s.canary_share:.0%} ({args.seeds} seeds each)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)

    worst = min(r["caught"] for r in rows)
    worst_false = max(r["false"] for r in rows)
    value = worst if worst_false <= FALSE_ROLLBACK_BOUND else 0.0
    note = "; ".join(f"hit rate {r['p']}: caught {r['caught']:.3f}, A/A false {r['false']:.3f}, "
                     f"naive peeking A/A false {r['naive_false']:.3f}" for r in rows)
    record("guard_detects_degraded_version", value=value, baseline=max(r["naive_false"] for r in rows), ratio=value,
           unit="share of seeds (baseline: naive peeking's worst A/A false-rollback share)", goal=0.95,
           command=command_line("rollout_guard.py", parser, args),
           note=f"{args.seeds} seeds per case, canary share {s.canary_share}, budget {s.budget_lists} canary lists, "
                f"alpha {s.alpha}; {note}")
    console.print(f"guard_detects_degraded_version = {value:.3f} (goal 0.95); plot {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
