"""Compare two arms' live hit rates: an interval for people, an always-valid test for the guard.

A served list is a *hit* when at least one of its items was engaged with inside the attribution
window (``batch.attribution``); an arm's hit rate is hits / lists, one Bernoulli trial per list.

* :func:`compare` gives the difference and the relative lift with a normal-approximation
  confidence interval: what ``recsys experiment status`` and the dashboard print, valid when read
  once (at a planned size).
* :func:`always_valid_evidence` is the mixture sequential probability ratio (mSPRT, Johari et al.,
  "Always valid inference", 2017) for the same difference: a guard may look after every batch of
  impressions and still wrongly reject an arm that is no worse with probability at most ``alpha``.
  Reading a fixed interval again and again would not hold that bound (each look is another chance
  of a false alarm).

>>> c = compare(ArmCounts(lists=1000, hits=200), ArmCounts(lists=1000, hits=150))
>>> round(c.difference, 3), round(c.relative, 3), c.low < c.difference < c.high < 0
(-0.05, -0.25, True)
>>> always_valid_evidence(ArmCounts(1000, 200), ArmCounts(1000, 200), tau=0.04) < 1  # no difference: no evidence
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class ArmCounts:
    """What attribution counted for one arm so far."""

    lists: int = 0
    hits: int = 0  # lists with at least one engaged item
    shown: int = 0  # items shown
    engaged: int = 0  # of those, engaged with in the window

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lists if self.lists else 0.0

    @property
    def ctr(self) -> float:
        return self.engaged / self.shown if self.shown else 0.0

    def to_dict(self) -> dict:
        return {"lists": self.lists, "hits": self.hits, "shown": self.shown, "engaged": self.engaged,
                "hit_rate": round(self.hit_rate, 5), "ctr": round(self.ctr, 5)}


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control hit rate, with a two-sided interval at ``confidence``."""

    difference: float
    low: float
    high: float
    relative: float  # difference / control hit rate (0 when the control has none)
    relative_low: float
    relative_high: float
    confidence: float

    def to_dict(self) -> dict:
        return {k: round(v, 5) for k, v in self.__dict__.items()}


def _variance(a: ArmCounts) -> float:
    p = a.hit_rate
    return p * (1 - p) / a.lists if a.lists else math.inf


def compare(control: ArmCounts, treatment: ArmCounts, confidence: float = 0.95) -> Comparison:
    """Difference of hit rates with a normal interval; the relative one divides by the control's rate."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    d = treatment.hit_rate - control.hit_rate
    half = z * math.sqrt(_variance(control) + _variance(treatment))
    base = control.hit_rate
    scale = 1 / base if base > 0 else 0.0
    return Comparison(d, d - half, d + half, d * scale, (d - half) * scale, (d + half) * scale, confidence)


def always_valid_evidence(control: ArmCounts, treatment: ArmCounts, tau: float, tolerance: float = 0.0) -> float:
    """Likelihood ratio of "the treatment's hit rate differs from (1 - tolerance) x the control's"
    against "it equals it", mixed over a normal prior of the difference with standard deviation
    ``tau``. Under the null it is a nonnegative martingale, so it ever reaching 1 / alpha has
    probability at most alpha however often it is read (Ville's inequality)."""
    if control.lists == 0 or treatment.lists == 0:
        return 0.0
    theta = treatment.hit_rate - (1 - tolerance) * control.hit_rate
    v = _variance(treatment) + (1 - tolerance) ** 2 * _variance(control)
    if v <= 0:  # every list a hit, or none, in both arms: no spread to measure yet
        return 0.0
    t2 = tau * tau
    return math.sqrt(v / (v + t2)) * math.exp(theta * theta * t2 / (2 * v * (v + t2)))


__all__ = ["ArmCounts", "Comparison", "always_valid_evidence", "compare"]
