"""Experiments: arms (model versions) with traffic shares, and which arm a user is in.

An experiment is one JSON file (``<data_dir>/experiments/current.json``, owned by
:class:`ExperimentStore`); ended ones are appended to ``history.jsonl`` beside it. The API reads
the file (re-read only when it changes) and serves each user the model of their arm.

A user's arm comes from a **consistent hash** of (salt, experiment name, user id) into [0, 1),
cut by the arms' cumulative shares in their listed order: the same user always gets the same
arm, in every API process, without any shared state; and growing the first arm's share (a
canary's ramp-up) only moves users *into* it.

>>> exp = Experiment(name="ab", arms=[ArmSettings(name="a", version="v0001", share=0.5),
...                                   ArmSettings(name="b", version="v0002", share=0.5)])
>>> assign(exp, "user-42", salt="recsys").name == assign(exp, "user-42", salt="recsys").name  # sticky
True
>>> counts = {"a": 0, "b": 0}
>>> for u in range(10_000):
...     counts[assign(exp, str(u), salt="recsys").name] += 1
>>> 4800 < counts["a"] < 5200
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from infra.settings import ArmSettings
from models.registry import exclusive_lock

CURRENT, HISTORY = "current.json", "history.jsonl"
RUNNING, ENDED = "running", "ended"
EXPERIMENT, ROLLOUT = "experiment", "rollout"
CONTROL, CANARY = "control", "canary"  # a rollout's arm names


class Experiment(BaseModel):
    """Arms and shares; the first arm named ``control`` (or else the first arm) is the control."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["experiment", "rollout"] = EXPERIMENT
    arms: list[ArmSettings] = Field(min_length=2)
    status: Literal["running", "ended"] = RUNNING
    started_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    ended_at: str | None = None
    outcome: str | None = None  # stopped, promoted, rolled_back
    reason: str | None = None
    earlier_versions: dict[str, list[str]] = Field(default_factory=dict, description="per arm, the versions it served before its current one (a rollout's canary follows the online learner's newest)")

    @model_validator(mode="after")
    def _arms_make_sense(self) -> "Experiment":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must differ: {names}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"the arms' shares add up to {total:g}, not 1: "
                             + ", ".join(f"{a.name}={a.share:g}" for a in self.arms))
        return self

    @property
    def control(self) -> ArmSettings:
        return next((a for a in self.arms if a.name == CONTROL), self.arms[0])

    def arm(self, name: str) -> ArmSettings:
        return next(a for a in self.arms if a.name == name)

    @property
    def versions(self) -> set[str]:
        return {a.version for a in self.arms}

    def served_by(self, arm: str) -> list[str]:
        """Every version this arm has served, oldest first: its lists are counted under each."""
        return [*self.earlier_versions.get(arm, []), self.arm(arm).version]


def arm_label(experiment: Experiment, arm: str) -> str:
    """What a served list's impression (and so attribution) calls the arm: ``<experiment>/<arm>``,
    so two experiments' arms never pool their counts, even with the same version and arm name."""
    return f"{experiment.name}/{arm}"


def bucket(salt: str, experiment: str, user_id: str) -> float:
    """The user's place in [0, 1) for this experiment (uniform, stable, independent across experiments)."""
    digest = hashlib.blake2b(f"{salt}\x1f{experiment}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def assign(experiment: Experiment, user_id: str, salt: str) -> ArmSettings:
    """The user's arm: the first whose cumulative share passes the user's bucket."""
    x, edge = bucket(salt, experiment.name, user_id), 0.0
    for arm in experiment.arms:
        edge += arm.share
        if x < edge:
            return arm
    return experiment.arms[-1]  # rounding of the shares' sum


class ExperimentStore:
    """Owns the experiments directory: the current experiment and the history of ended ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cached: tuple[float, Experiment | None] | None = None

    @property
    def current_file(self) -> Path:
        return self.directory / CURRENT

    def current(self) -> Experiment | None:
        """The latest experiment (running or ended), re-read only when the file changed."""
        try:
            stamp = os.stat(self.current_file).st_mtime_ns
        except FileNotFoundError:
            return None
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, Experiment.model_validate_json(self.current_file.read_text()))
        return self._cached[1]

    def running(self) -> Experiment | None:
        exp = self.current()
        return exp if exp is not None and exp.status == RUNNING else None

    def history(self) -> list[Experiment]:
        f = self.directory / HISTORY
        return [Experiment.model_validate_json(line) for line in f.read_text().splitlines() if line] if f.is_file() else []

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """One change at a time across processes (CLI, the API's guard, the nightly job)."""
        return exclusive_lock(self.directory / ".lock")

    def _write(self, exp: Experiment) -> None:
        tmp = self.current_file.with_suffix(".tmp")
        tmp.write_text(exp.model_dump_json(indent=2))
        os.replace(tmp, self.current_file)  # readers see the old file or the new one

    def start(self, exp: Experiment) -> Experiment:
        with self._lock():
            running = self.running()
            if running is not None:
                raise ValueError(f"experiment {running.name!r} is running: stop it first "
                                 "(`recsys experiment stop`, or let its rollout decide)")
            self._write(exp)
        return exp

    def move_arm(self, arm: str, version: str, only_if: str) -> bool:
        """Point the running experiment's ``arm`` at a newer ``version``, only while it serves
        ``only_if`` (compare and set); its earlier lists still count for it."""
        with self._lock():
            running = self.running()
            if running is None or running.arm(arm).version != only_if:
                return False
            arms = [a.model_copy(update={"version": version}) if a.name == arm else a for a in running.arms]
            earlier = {**running.earlier_versions, arm: [*running.earlier_versions.get(arm, []), only_if]}
            self._write(running.model_copy(update={"arms": arms, "earlier_versions": earlier}))
        return True

    def end(self, outcome: str, reason: str, name: str | None = None) -> Experiment:
        """End the running experiment (only if it is ``name``, when given) and keep it in the history."""
        with self._lock():
            running = self.running()
            if running is None or (name is not None and running.name != name):
                raise ValueError(f"no experiment{' ' + repr(name) if name else ''} is running")
            ended = running.model_copy(update={"status": ENDED, "outcome": outcome, "reason": reason,
                                               "ended_at": datetime.now(timezone.utc).isoformat()})
            self._write(ended)
            with (self.directory / HISTORY).open("a") as fh:
                fh.write(json.dumps(ended.model_dump()) + "\n")
        return ended


__all__ = ["CANARY", "CONTROL", "ENDED", "EXPERIMENT", "Experiment", "ExperimentStore", "ROLLOUT", "RUNNING",
           "arm_label", "assign", "bucket"]
