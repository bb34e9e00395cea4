"""Online feature read for one user on the serving path vs Feast's get_online_features.

Same Redis, same users, same features (what the ranking model reads for a user: its numeric
user features and recent items), interleaved so drift hits both. Records
feature_read_p99_feast_over_ours = Feast p99 / ours p99 (goal 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, local_stack, record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    from batch import backfill
    from features import names
    from features.model_inputs import feature_spec
    from features.store import apply, feature_store
    from serving.online_features import OnlineFeatureReader
    from streaming.lake import append_events
    from streaming.replay import load_events

    with local_stack() as settings:
        settings = settings.model_copy(update={"ml100k_path": settings.ml100k_path.resolve()})
        apply(settings)
        events = load_events(settings.ml100k_path).events
        append_events(settings, events)
        backfill.write_online(settings, backfill.compute(settings, progress=False))
        spec = feature_spec(settings)
        refs = [*spec.user_refs, spec.recent_ref]
        ours = OnlineFeatureReader(settings, refs, names.USER_KEY)
        store = feature_store(settings)
        users = sorted({e.user_id for e in events})
        rng = np.random.default_rng(0)
        picks = [users[i] for i in rng.integers(0, len(users), args.reads)]
        t_ours, t_feast = [], []
        for i, u in enumerate(picks + picks[:200]):  # the first 200 warm both paths up
            t = time.perf_counter()
            a = ours.read([u])[0]
            t1 = time.perf_counter()
            b = store.get_online_features(features=refs, entity_rows=[{names.USER_KEY: u}]).to_dict()
            t2 = time.perf_counter()
            if i >= 200:
                t_ours.append((t1 - t) * 1000)
                t_feast.append((t2 - t1) * 1000)
            if i < 50:
                assert a[0] == b[refs[0].split(":")[1]][0], (u, a[0], b)  # same values, not just fast
    p_ours, p_feast = float(np.percentile(t_ours, 99)), float(np.percentile(t_feast, 99))
    print(f"ours p50 {np.percentile(t_ours, 50):.3f} ms p99 {p_ours:.3f} ms; Feast p50 {np.percentile(t_feast, 50):.3f} ms "
          f"p99 {p_feast:.3f} ms; ratio {p_feast / p_ours:.1f}")
    record("feature_read_p99_feast_over_ours", value=p_ours, baseline=p_feast, ratio=p_feast / p_ours, unit="ms p99", goal=2,
           command=command_line("feature_read.py", parser, args),
           note=f"{len(refs)} features per user; p50 ours {np.percentile(t_ours, 50):.3f} ms vs Feast {np.percentile(t_feast, 50):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
