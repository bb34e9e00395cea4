"""Does online learning help? The prequential replay of ml-100k (``recsys evaluate``), recorded.

Replays the last ``--eval-days`` of the file event by event: each strategy recommends first,
then learns. Records online_vs_daily_ndcg10 = NDCG@10 of daily retrain + online updates ÷
NDCG@10 of daily retrain only (same replay, same candidates, same features), with the static
model and popularity in the note; also fresh_features_vs_stale_ndcg10 = NDCG@10 of the daily
model with streaming features ÷ the same model with features frozen at each retrain (what the
stream job is worth). The plot goes to docs/img/prequential.png. With
``--renew-items F`` the replay's catalogue moves (``batch.evaluate.catalogue_churn``: a fraction F of items
relaunched under a new id every day of the evaluated period) and the ratio is recorded as
online_vs_daily_ndcg10_churn (plot: docs/img/prequential_churn.png).

The same replay scores the yardsticks (``evaluation.baselines``) and the served pipeline (what the
API returns), so it also records quality_vs_itemknn_ndcg10, quality_vs_ease_ndcg10 and
quality_vs_sasrec_ndcg10: NDCG@10 of the served pipeline ÷ the baseline's, with the paired
bootstrap interval of the difference in the note (goals 1.1, 1.1, 1.0; issue 19).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, command_line, record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval-days", type=float, default=14.0)
    parser.add_argument("--retrain-every-days", type=float, default=1.0)
    parser.add_argument("--renew-items", type=float, default=0.0, help="fraction of items relaunched daily (0: none)")
    args = parser.parse_args()
    from infra.noise import quiet_third_party_noise

    quiet_third_party_noise()
    from batch.evaluate.evaluation import evaluate, replay_window
    from batch.evaluate.prequential_report import write_report
    from infra.settings import Settings
    from streaming.replay import load_events

    settings = Settings()
    settings = settings.model_copy(update={"ml100k_path": (BENCH_DIR.parent / settings.ml100k_path).resolve()
                                           if not settings.ml100k_path.is_absolute() else settings.ml100k_path})
    window = replay_window(load_events(settings.ml100k_path).events, args.eval_days, renew_items=args.renew_items)
    began = time.perf_counter()
    report = evaluate(settings, window, retrain_every_days=args.retrain_every_days)
    seconds = time.perf_counter() - began
    churn = "_churn" if args.renew_items else ""
    out = BENCH_DIR / "out" / f"prequential{churn}"
    json_path, png_path = write_report(report, out)
    shutil.copy(png_path, BENCH_DIR.parent / "docs" / "img" / f"prequential{churn}.png")
    o = report.overall
    summary = ", ".join(f"{s} HR@10 {m['hr']:.4f} NDCG@10 {m['ndcg']:.4f}" for s, m in o.items())
    print(f"{report.events:,} events replayed ({o['online']['events']:,} scored) in {seconds:.0f} s; {summary}")
    d = report.differences["online_vs_daily"]
    scenario = f"; {args.renew_items:.0%} of items relaunched under new ids daily" if args.renew_items else ""
    record(f"online_vs_daily_ndcg10{churn}", value=100 * o["online"]["ndcg"], baseline=100 * o["daily"]["ndcg"],
           ratio=report.ratio("ndcg", "online", "daily"), unit="NDCG@10 (%)", goal=1.03,
           command=command_line("prequential.py", parser, args),
           note=(f"last {args.eval_days:g} days of ml-100k{scenario}, {o['online']['events']:,} positive events scored, "
                 f"{report.retrains} retrains; {summary}; online - daily NDCG@10 {d['mean']:+.4f} (95% bootstrap interval "
                 f"{d['low']:+.4f} .. {d['high']:+.4f}); online/static {report.ratio('ndcg', 'online', 'static'):.3f}, "
                 f"online/popularity {report.ratio('ndcg', 'online', 'popularity'):.3f}"))
    for baseline, goal in (("item_knn", 1.1), ("ease", 1.1), ("sasrec", 1.0)):
        if baseline not in o:
            continue
        q = report.differences[f"served_vs_{baseline}"]
        record(f"quality_vs_{baseline.replace('_', '')}_ndcg10{churn}", value=100 * o["served"]["ndcg"],
               baseline=100 * o[baseline]["ndcg"], ratio=report.ratio("ndcg", "served", baseline), unit="NDCG@10 (%)",
               goal=goal, command=command_line("prequential.py", parser, args),
               note=(f"last {args.eval_days:g} days of ml-100k{scenario}: the served pipeline (the API's candidates, "
                     f"ranker, trending slots, filters) vs {baseline}, same events; served - {baseline} NDCG@10 "
                     f"{q['mean']:+.4f} (95% paired bootstrap {q['low']:+.4f} .. {q['high']:+.4f}); "
                     f"evaluate took {seconds:.0f} s"))
    f = report.differences["daily_vs_daily_stale"]
    record(f"fresh_features_vs_stale_ndcg10{churn}", value=100 * o["daily"]["ndcg"], baseline=100 * o["daily_stale"]["ndcg"],
           ratio=report.ratio("ndcg", "daily", "daily_stale"), unit="NDCG@10 (%)", goal=1.0,
           command=command_line("prequential.py", parser, args),
           note=(f"same replay: the daily model with streaming features vs with features frozen at each retrain; "
                 f"difference {f['mean']:+.4f} (95% bootstrap interval {f['low']:+.4f} .. {f['high']:+.4f})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
