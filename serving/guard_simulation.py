"""Synthetic traffic with a known gap, to measure what the rollout guard decides.

Lists arrive one at a time; each user is in the canary with probability ``canary_share``; a list
is a hit with the arm's true hit rate. The guard (``serving.rollout_guard.decide``) reads the
running counts every ``check_every`` lists, as the API's guard reads attribution's counters every
few seconds. The tests use it for a known gap and an A/A split; bench/rollout_guard.py runs it
over many seeds.

>>> from infra.settings import RolloutSettings
>>> run = simulate(0.2, 0.1, RolloutSettings(), seed=0)
>>> run.action, run.canary_lists < RolloutSettings().budget_lists
('rollback', True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infra.settings import RolloutSettings
from serving.arm_comparison import ArmCounts, compare
from serving.rollout_guard import WAIT, decide


@dataclass(frozen=True)
class GuardRun:
    action: str  # what the guard decided first (WAIT when it never did within the traffic)
    canary_lists: int  # canary lists attributed when it decided
    lists: int  # all lists by then


def _traffic(p_control: float, p_canary: float, share: float, n: int, rng: np.random.Generator):
    in_canary = rng.random(n) < share
    hit = rng.random(n) < np.where(in_canary, p_canary, p_control)
    return np.cumsum(in_canary), np.cumsum(hit & in_canary), np.cumsum(hit & ~in_canary)


def simulate(p_control: float, p_canary: float, s: RolloutSettings, seed: int, check_every: int = 100,
             max_lists: int | None = None) -> GuardRun:
    """Feed one seed's traffic to the guard until it decides (or ``max_lists``, by default the
    lists it takes for the canary to reach twice its budget)."""
    rng = np.random.default_rng(seed)
    n = max_lists or int(2 * s.budget_lists / s.canary_share)
    canary, canary_hits, control_hits = _traffic(p_control, p_canary, s.canary_share, n, rng)
    for i in range(check_every - 1, n, check_every):
        c = int(canary[i])
        d = decide(ArmCounts(i + 1 - c, int(control_hits[i])), ArmCounts(c, int(canary_hits[i])), s)
        if d.action != WAIT:
            return GuardRun(d.action, c, i + 1)
    return GuardRun(WAIT, int(canary[-1]), n)


def peeking_rolls_back(p_control: float, p_canary: float, s: RolloutSettings, seed: int, check_every: int = 100) -> bool:
    """The naive guard, for comparison: roll back whenever the fixed interval (1 - alpha, read at
    every check) lies below the control, until the budget. Each look is another chance of a false
    alarm, so on an A/A split it rolls back far more often than alpha."""
    rng = np.random.default_rng(seed)
    n = int(s.budget_lists / s.canary_share)
    canary, canary_hits, control_hits = _traffic(p_control, p_canary, s.canary_share, n, rng)
    for i in range(check_every - 1, n, check_every):
        c = int(canary[i])
        if min(c, i + 1 - c) < s.min_lists:
            continue
        cmp = compare(ArmCounts(i + 1 - c, int(control_hits[i])), ArmCounts(c, int(canary_hits[i])), 1 - 2 * s.alpha)
        if cmp.high < 0:
            return True
    return False


__all__ = ["GuardRun", "peeking_rolls_back", "simulate"]
