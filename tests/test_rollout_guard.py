"""The rollout guard on synthetic traffic with a known gap: it promotes a better canary, rolls
back a worse one within the budget, and on an A/A split rarely does either wrongly (its
false-rollback rate measured over many seeds, where reading a fixed interval at every check
would roll back far more often)."""

from __future__ import annotations

import numpy as np

from infra.settings import RolloutSettings
from serving.arm_comparison import ArmCounts
from serving.guard_simulation import peeking_rolls_back, simulate
from serving.rollout_guard import PROMOTE, ROLLBACK, WAIT, decide

SETTINGS = RolloutSettings()


def test_a_worse_canary_is_rolled_back_within_the_budget() -> None:
    runs = [simulate(0.2, 0.16, SETTINGS, seed) for seed in range(40)]
    assert all(r.action == ROLLBACK and r.canary_lists <= SETTINGS.budget_lists for r in runs)


def test_a_better_canary_is_promoted_and_never_rolled_back() -> None:
    runs = [simulate(0.2, 0.24, SETTINGS, seed) for seed in range(40)]
    assert all(r.action == PROMOTE for r in runs)
    assert np.median([r.canary_lists for r in runs]) < SETTINGS.budget_lists  # on evidence, before the budget


def test_an_equal_canary_is_rarely_rolled_back_however_often_the_guard_looks() -> None:
    seeds = range(300)
    ours = np.mean([simulate(0.2, 0.2, SETTINGS, 5000 + s).action == ROLLBACK for s in seeds])
    naive = np.mean([peeking_rolls_back(0.2, 0.2, SETTINGS, 5000 + s) for s in seeds])
    assert ours <= 0.06  # alpha = 0.05 bounds it; sampling error over 300 seeds is ~1.3 points
    assert naive > 3 * SETTINGS.alpha  # what the always-valid test protects against


def test_it_waits_for_enough_lists_and_says_why() -> None:
    d = decide(ArmCounts(5000, 1000), ArmCounts(SETTINGS.min_lists - 1, 0), SETTINGS)
    assert d.action == WAIT and f"deciding from {SETTINGS.min_lists} each" in d.reason


def test_a_rollback_names_the_rates_and_the_bound() -> None:
    d = decide(ArmCounts(4000, 800), ArmCounts(2000, 200), RolloutSettings(max_drop=0.1))
    assert d.action == ROLLBACK
    assert "canary hit rate 0.1000 vs control 0.2000 (-50.0%" in d.reason and "max_drop=10%" in d.reason


def test_a_tolerated_drop_is_not_rolled_back() -> None:
    # 5% below the control with a 10% tolerance: never rolled back, promoted at the latest at the budget
    runs = [simulate(0.2, 0.19, RolloutSettings(max_drop=0.1), seed) for seed in range(20)]
    assert all(r.action == PROMOTE for r in runs)


def test_no_engagement_at_all_is_no_reason_to_promote() -> None:
    d = decide(ArmCounts(50_000, 0), ArmCounts(SETTINGS.budget_lists, 0), SETTINGS)
    assert d.action == WAIT and "is the attribution job running?" in d.reason
