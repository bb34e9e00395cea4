"""What a prequential replay produced: per-event gains -> overall and per-day metrics with
intervals, paired differences, one table, one plot.

Every strategy is scored on exactly the same events, so a gap between two of them is judged by
the *paired* difference (mean of the per-event NDCG differences, with a bootstrap interval):
it says whether the gap is bigger than what the particular events drawn would give by chance.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from infra.settings import Paths


def ndcg_gain(rank: int | None, k: int) -> float:
    """1/log2(rank + 2) for a 0-based rank inside the top k, else 0."""
    return 1 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def bootstrap_means(values: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``values``, drawn in blocks so memory
    stays bounded for long replays."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(resamples)
    block = max(1, 2_000_000 // max(n, 1))
    for lo in range(0, resamples, block):
        hi = min(resamples, lo + block)
        out[lo:hi] = values[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    return out


def mean_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean with a percentile-bootstrap 95% interval.

    >>> m = mean_interval([0.0, 1.0, 1.0, 0.0])
    >>> m["mean"], 0.0 <= m["low"] <= 0.5 <= m["high"] <= 1.0
    (0.5, True)
    """
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    low, high = np.percentile(bootstrap_means(v, resamples, seed), [2.5, 97.5])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high)}


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over the same events, with a percentile-bootstrap 95% interval, and the
    share of events where either is ahead.

    >>> d = paired_difference([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0])
    >>> d["mean"], d["a_ahead"], d["b_ahead"]
    (0.5, 0.5, 0.0)
    >>> 0.0 <= d["low"] <= d["mean"] <= d["high"] <= 1.0
    True
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "a_ahead": math.nan, "b_ahead": math.nan}
    low, high = np.percentile(bootstrap_means(diff, resamples, seed), [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "a_ahead": float((diff > 0).mean()), "b_ahead": float((diff < 0).mean())}


def day_of(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


@dataclass
class Scores:
    """Per scored event: its time, and each strategy's NDCG@k gain (0 = not in the top k)."""

    k: int
    strategies: tuple[str, ...]
    times: list[int] = field(default_factory=list)
    gains: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gains = {s: [] for s in self.strategies}

    def add(self, t_ms: int, ranks: dict[str, int | None]) -> None:
        self.times.append(t_ms)
        for s in self.strategies:
            self.gains[s].append(ndcg_gain(ranks[s], self.k))


@dataclass
class Report:
    k: int
    eval_start_ms: int
    events: int
    history_events: int
    retrains: int
    strategies: tuple[str, ...] = ()
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    per_day: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # day -> strategy -> metrics
    differences: dict[str, dict[str, float]] = field(default_factory=dict)  # "a_vs_b" -> paired NDCG@K difference
    scenario: dict[str, float] = field(default_factory=dict)  # how the replay was altered, if at all (catalogue churn)
    fit_seconds: dict[str, float] = field(default_factory=dict)  # training time per strategy, all refits
    scores: Scores | None = None

    @classmethod
    def build(cls, scores: Scores, pairs: Sequence[tuple[str, str]], resamples: int, **fields) -> "Report":
        overall, per_day = {}, {}
        days = np.array([day_of(t) for t in scores.times])
        for s in scores.strategies:
            gains = np.asarray(scores.gains[s])
            hits = (gains > 0).astype(np.float64)
            hr, ndcg = mean_interval(hits, resamples), mean_interval(gains, resamples)
            overall[s] = {"hr": hr["mean"], "hr_low": hr["low"], "hr_high": hr["high"], "ndcg": ndcg["mean"],
                          "ndcg_low": ndcg["low"], "ndcg_high": ndcg["high"], "events": len(gains)}
            for d in dict.fromkeys(days.tolist()):
                mask = days == d
                per_day.setdefault(d, {})[s] = {"hr": float(hits[mask].mean()), "ndcg": float(gains[mask].mean()),
                                                "events": int(mask.sum())}
        differences = {f"{a}_vs_{b}": paired_difference(scores.gains[a], scores.gains[b], resamples)
                       for a, b in pairs if a in scores.gains and b in scores.gains}
        return cls(k=scores.k, strategies=scores.strategies, overall=overall, per_day=per_day, differences=differences,
                   scores=scores, **fields)

    def ratio(self, metric: str, a: str, b: str) -> float:
        top, bottom = self.overall[a][metric], self.overall[b][metric]
        return top / bottom if bottom else math.nan

    def best(self, among: Sequence[str], metric: str = "ndcg") -> str | None:
        present = [s for s in among if s in self.overall]
        return max(present, key=lambda s: self.overall[s][metric]) if present else None

    def to_dict(self) -> dict:
        pairs = [p.split("_vs_") for p in self.differences]
        return {"k": self.k, "eval_start_ms": self.eval_start_ms, "events": self.events,
                "history_events": self.history_events, "retrains": self.retrains, "strategies": list(self.strategies),
                "overall": self.overall, "per_day": self.per_day, "ndcg_differences": self.differences,
                "scenario": self.scenario, "fit_seconds": self.fit_seconds,
                "ratios": {f"{m}_{a}_vs_{b}": self.ratio(m, a, b) for m in ("hr", "ndcg") for a, b in pairs}}

    def table(self) -> "object":
        """A rich table: every strategy with HR@K and NDCG@K and their 95% intervals, best first."""
        from rich.table import Table

        table = Table(title=f"prequential replay: {self.overall[self.strategies[0]]['events']:,} scored events, "
                            f"top {self.k} of every unseen catalogue item")
        for column in ("strategy", f"HR@{self.k}", "95% interval", f"NDCG@{self.k}", "95% interval", "fit s"):
            table.add_column(column, justify="left" if column == "strategy" else "right")
        for s in sorted(self.strategies, key=lambda s: -self.overall[s]["ndcg"]):
            m = self.overall[s]
            table.add_row(s, f"{m['hr']:.4f}", f"{m['hr_low']:.4f} .. {m['hr_high']:.4f}", f"{m['ndcg']:.4f}",
                          f"{m['ndcg_low']:.4f} .. {m['ndcg_high']:.4f}",
                          f"{self.fit_seconds[s]:.0f}" if s in self.fit_seconds else "")
        return table


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """prequential.json, and prequential.png: the cumulative HR@K and NDCG@K of every strategy over
    the replay's dates (a cumulative mean settles instead of spiking day to day, and a date axis
    keeps its labels readable for any length), with 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / Paths.REPLAY_REPORT
    png_path = json_path.with_suffix(".png")
    json_path.write_text(json.dumps(report.to_dict(), indent=2, default=float))
    scores = report.scores
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    if scores is not None and scores.times:
        when = np.array([dt.datetime.fromtimestamp(t / 1000, tz=dt.timezone.utc) for t in scores.times])
        n = np.arange(1, len(when) + 1)
        shown = slice(min(30, len(n) // 10), None)  # a mean over a handful of events says nothing yet
        order = sorted(report.strategies, key=lambda s: -report.overall[s]["ndcg"])
        for ax, metric in zip(axes, ("hr", "ndcg")):
            for s in order:
                gains = np.asarray(scores.gains[s])
                values = (gains > 0).astype(np.float64) if metric == "hr" else gains
                mean = np.cumsum(values) / n
                spread = np.sqrt(np.maximum(np.cumsum(values ** 2) / n - mean ** 2, 0.0) / n)
                line, = ax.plot(when[shown], mean[shown], lw=1.6, label=f"{s} ({report.overall[s][metric]:.3f})")
                ax.fill_between(when[shown], (mean - 1.96 * spread)[shown], (mean + 1.96 * spread)[shown],
                                color=line.get_color(), alpha=0.08, lw=0)
            locator = mdates.AutoDateLocator(maxticks=8)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.set(title=f"cumulative {metric.upper()}@{report.k} (95% band)", ylabel=f"{metric.upper()}@{report.k}")
            ax.set_ylim(0, max(report.overall[s][metric] for s in order) * 1.6 + 1e-3)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
