"""The guard of a rollout: promote the canary, roll it back, or keep waiting, from live hit rates.

A new version serves ``canary_share`` of users beside the control (the version served before).
Attribution counts each arm's lists and hits; the guard reads them every few seconds and
decides with :func:`decide`:

* **wait** while either arm has fewer than ``min_lists`` lists (too few for the normal
  approximation behind the test);
* **roll back** as soon as the always-valid test (``serving.arm_comparison``) has evidence
  >= 1 / ``alpha`` that the canary's hit rate is below ``(1 - max_drop)`` x the control's;
* **promote** when the same evidence says it is above that line, or when the canary has served
  ``budget_lists`` lists without a rollback (no harm shown within the budget) - but never while
  neither arm has a single engaged item (no signal: attribution may not be running).

Because the test stays valid under continuous looking, a canary as good as the control is rolled
back in at most ``alpha`` of rollouts however often the guard checks (measured by
bench/rollout_guard.py over many seeds, with the share of 20%-worse versions it catches).

>>> s = RolloutSettings(min_lists=100, budget_lists=5000)
>>> decide(ArmCounts(90, 20), ArmCounts(90, 20), s).action
'wait'
>>> decide(ArmCounts(4000, 800), ArmCounts(2000, 200), s).action  # 10% against 20% of lists engaged
'rollback'
>>> decide(ArmCounts(20000, 4000), ArmCounts(5000, 1000), s).action
'promote'
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings import RolloutSettings
from serving.arm_comparison import ArmCounts, Comparison, always_valid_evidence, compare

WAIT, PROMOTE, ROLLBACK = "wait", "promote", "rollback"


@dataclass(frozen=True)
class Decision:
    action: str  # WAIT, PROMOTE or ROLLBACK
    reason: str
    evidence: float
    comparison: Comparison | None = None

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason, "evidence": round(self.evidence, 3),
                "comparison": self.comparison.to_dict() if self.comparison else None}


def mixing_scale(control: ArmCounts, s: RolloutSettings) -> float:
    """The prior's standard deviation of the hit-rate difference: ``tau_relative`` of the
    control's rate (a floor of one list keeps it positive before the first hit)."""
    return s.tau_relative * max(control.hit_rate, 1 / max(control.lists, 1))


def decide(control: ArmCounts, canary: ArmCounts, s: RolloutSettings) -> Decision:
    """What the guard does now with these counts (see the module docstring)."""
    if min(control.lists, canary.lists) < s.min_lists:
        return Decision(WAIT, f"{canary.lists} canary and {control.lists} control lists attributed; "
                              f"deciding from {s.min_lists} each (rollout.min_lists)", 0.0)
    evidence = always_valid_evidence(control, canary, mixing_scale(control, s), s.max_drop)
    c = compare(control, canary)
    line = (1 - s.max_drop) * control.hit_rate
    said = (f"canary hit rate {canary.hit_rate:.4f} vs control {control.hit_rate:.4f} "
            f"({c.relative:+.1%}, {c.confidence:.0%} interval {c.relative_low:+.1%} to {c.relative_high:+.1%}) "
            f"over {canary.lists} and {control.lists} lists")
    threshold = 1 / s.alpha
    if evidence >= threshold and canary.hit_rate < line:
        return Decision(ROLLBACK, f"{said}: worse than the control beyond rollout.max_drop={s.max_drop:.0%} "
                                  f"(evidence {evidence:.1f} >= {threshold:.0f})", evidence, c)
    if evidence >= threshold:
        return Decision(PROMOTE, f"{said}: not worse than the control beyond rollout.max_drop={s.max_drop:.0%} "
                                 f"(evidence {evidence:.1f} >= {threshold:.0f})", evidence, c)
    if control.hits + canary.hits == 0:  # nothing engaged at all: no signal to judge by
        return Decision(WAIT, f"{said}: no engaged item attributed in either arm, nothing to judge by "
                              "(is the attribution job running? `recsys attribution status`)", evidence, c)
    if canary.lists >= s.budget_lists:
        return Decision(PROMOTE, f"{said}: no harm shown within rollout.budget_lists={s.budget_lists} "
                                 f"(evidence {evidence:.1f} < {threshold:.0f})", evidence, c)
    return Decision(WAIT, f"{said}: evidence {evidence:.1f} < {threshold:.0f}, "
                          f"{s.budget_lists - canary.lists} canary lists to the budget", evidence, c)


__all__ = ["Decision", "PROMOTE", "ROLLBACK", "WAIT", "decide", "mixing_scale"]
