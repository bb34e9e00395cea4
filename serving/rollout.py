"""Experiment results and the guarded rollout: what the attribution counts say, and acting on it.

``start_rollout`` puts a new version on ``rollout.canary_share`` of users beside the served one
(the control); the API runs a :class:`RolloutGuard` every ``rollout.check_every_s`` that reads
both arms' counts from Redis (``streaming.attribution_counts``, written by the attribution job),
asks ``serving.rollout_guard.decide`` and acts: promote (the registry pointer moves to the
canary, compare-and-set on the control) or roll back (the rollout ends, the pointer never moved),
with the reason in the experiment file, ``GET /model``, the dashboard and the API's log.
:func:`serve_new_version` is how the nightly job and the online learner hand over a version:
promoted at once, or rolled out under the guard (``rollout.guard_new_versions``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from infra.settings import Settings
from models.registry import ModelRegistry
from serving.arm_comparison import ArmCounts, compare
from serving.experiments import CANARY, CONTROL, ROLLOUT, Experiment, ExperimentStore, arm_label
from serving.rollout_guard import PROMOTE, ROLLBACK, Decision, decide
from infra.settings import ArmSettings
from streaming.attribution_counts import AttributionCounts

log = logging.getLogger("recsys.rollout")
PROMOTED, ROLLED_BACK, STOPPED = "promoted", "rolled_back", "stopped"


def start_rollout(settings: Settings, version: str, share: float | None = None) -> Experiment:
    """Serve ``version`` to a canary share beside the served version, under the guard."""
    registry = ModelRegistry(settings.paths.models_dir)
    control = registry.served()
    if control is None:
        raise ValueError("nothing is served yet, so there is no control to roll out against: "
                         f"promote a first version (`recsys model promote {version}`)")
    if version == control:
        raise ValueError(f"{version} is already served to everyone")
    if version not in registry.versions():
        raise ValueError(f"no model version {version}: pick one of {registry.versions()}")
    share = share if share is not None else settings.experiments.rollout.canary_share
    exp = Experiment(name=f"rollout-{version}", kind=ROLLOUT, arms=[
        ArmSettings(name=CANARY, version=version, share=share),  # first: growing its share only adds users
        ArmSettings(name=CONTROL, version=control, share=round(1 - share, 9))])
    return ExperimentStore(settings.paths.experiments_dir).start(exp)


def arm_counts(exp: Experiment, counts: AttributionCounts) -> dict[str, ArmCounts]:
    """Each arm's attributed lists, hits, shown and engaged items, over every version it served."""
    out = {}
    for arm in exp.arms:
        totals = [counts.read(version, arm_label(exp, arm.name)) for version in exp.served_by(arm.name)]
        out[arm.name] = ArmCounts(sum(t.lists for t in totals), sum(t.hits for t in totals),
                                  sum(t.shown for t in totals), sum(t.engaged for t in totals))
    return out


def results(exp: Experiment, counts: AttributionCounts, confidence: float) -> dict:
    """Per arm: its counts, users reached, and its hit rate against the control's with an interval."""
    per_arm = arm_counts(exp, counts)
    control = per_arm[exp.control.name]
    arms = []
    for arm in exp.arms:
        users = sum(counts.read(v, arm_label(exp, arm.name)).users for v in exp.served_by(arm.name))
        row = {"arm": arm.name, "version": arm.version, "share": arm.share, **per_arm[arm.name].to_dict(), "users": users}
        if arm.name != exp.control.name:
            row["vs_control"] = compare(control, per_arm[arm.name], confidence).to_dict()
        arms.append(row)
    return {"experiment": exp.model_dump(), "control": exp.control.name, "arms": arms}


@dataclass
class GuardState:
    decision: Decision | None = None
    experiment: str | None = None


class RolloutGuard:
    """Reads a running rollout's counts, decides, and acts (see the module docstring)."""

    def __init__(self, settings: Settings, registry: ModelRegistry, store: ExperimentStore,
                 counts: AttributionCounts) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.counts = counts
        self.last = GuardState()

    def check(self) -> Decision | None:
        exp = self.store.running()
        if exp is None or exp.kind != ROLLOUT:
            return None
        per_arm = arm_counts(exp, self.counts)
        decision = decide(per_arm[CONTROL], per_arm[CANARY], self.settings.experiments.rollout)
        self.last = GuardState(decision, exp.name)
        if decision.action == PROMOTE:
            self.promote(exp, decision.reason)
        elif decision.action == ROLLBACK:
            self.roll_back(exp, decision.reason)
        return decision

    def promote(self, exp: Experiment, reason: str) -> bool:
        canary, control = exp.arm(CANARY).version, exp.arm(CONTROL).version
        if not self.registry.promote(canary, only_if_serving=control):
            reason = f"the served version moved away from {control} meanwhile; {canary} was not promoted"
            self._end(exp, STOPPED, reason)
            return False
        self._end(exp, PROMOTED, reason)
        return True

    def roll_back(self, exp: Experiment, reason: str) -> None:
        self._end(exp, ROLLED_BACK, reason)

    def _end(self, exp: Experiment, outcome: str, reason: str) -> None:
        try:
            self.store.end(outcome, reason, name=exp.name)
        except ValueError:  # another API process's guard (or an operator) ended it first
            return
        log.warning("rollout %s: %s (%s)", exp.name, outcome, reason)


def serve_new_version(settings: Settings, registry: ModelRegistry, version: str, only_if_serving: str | None = None,
                      previous: str | None = None) -> bool:
    """Hand a new version over to serving. Without the guard: promote it (compare-and-set on
    ``only_if_serving``). With ``rollout.guard_new_versions``: roll it out under the guard, or,
    when a rollout of ``previous`` (the same learner's last version) runs, move its canary arm
    on to this version. Returns whether the version serves anyone."""
    if not settings.experiments.rollout.guard_new_versions:
        return registry.promote(version, only_if_serving=only_if_serving)
    if registry.served() is None:  # the first version serves everyone: there is no control yet
        return registry.promote(version, only_if_serving=only_if_serving)
    store = ExperimentStore(settings.paths.experiments_dir)
    running = store.running()
    if running is not None:
        return (running.kind == ROLLOUT and previous is not None
                and store.move_arm(CANARY, version, only_if=previous))
    try:
        start_rollout(settings, version)
    except ValueError:  # another rollout started meanwhile
        return False
    return True


def on_canary(settings: Settings, version: str) -> bool:
    """Whether ``version`` is the canary of the running rollout (then the pointer rightly stays
    with the control, and a learner that published it is not superseded)."""
    running = ExperimentStore(settings.paths.experiments_dir).running()
    return running is not None and running.kind == ROLLOUT and running.arm(CANARY).version == version


__all__ = ["GuardState", "PROMOTED", "ROLLED_BACK", "RolloutGuard", "STOPPED", "arm_counts", "results",
           "on_canary", "serve_new_version", "start_rollout"]
