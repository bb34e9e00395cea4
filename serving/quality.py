"""What the dashboard's quality panel shows: the last `recsys evaluate` replay (every strategy's
HR@K and NDCG@K with intervals, and the served pipeline's paired gap to each baseline) and the
demo's held-out day (API vs item-kNN vs popularity), read from ``<data_dir>/reports``.

A missing report is not an error (nothing was run yet: the panel says which command writes it);
an unreadable one is reported by name, and the rest still shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra.settings import Paths

REPLAY_HINT = "run `recsys evaluate` to score the served pipeline against the baselines"
HOLDOUT_HINT = "`make demo` plays a held-out day through the API"


def quality_summary(paths: Paths) -> dict[str, Any]:
    return {"replay": _read(paths.replay_report, REPLAY_HINT, _replay),
            "holdout": _read(paths.holdout_report, HOLDOUT_HINT, lambda data: data)}


def _read(path: Path, hint: str, summarise) -> dict[str, Any]:  # noqa: ANN001 - dict -> dict
    if not path.is_file():
        return {"missing": str(path), "hint": hint}
    try:
        out = summarise(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"error": f"{path} is unreadable ({e.__class__.__name__}: {e}): {hint} again"}
    return {**out, "path": str(path), "modified": path.stat().st_mtime}


def _replay(data: dict[str, Any]) -> dict[str, Any]:
    """The strategies best first, and the served pipeline's paired NDCG gaps to the others."""
    overall = data["overall"]
    strategies = sorted(overall, key=lambda s: -overall[s]["ndcg"])
    gaps = {pair.split("_vs_", 1)[1]: d for pair, d in data.get("ndcg_differences", {}).items() if pair.startswith("served_vs_")}
    return {"k": data["k"], "eval_start_ms": data["eval_start_ms"], "events": data["events"],
            "scenario": data.get("scenario", {}), "strategies": [{"name": s, **overall[s]} for s in strategies],
            "served_vs": gaps}
