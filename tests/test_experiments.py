"""Experiments: sticky consistent-hash assignment that matches the shares, a ramp-up that only
adds users to the growing arm, a store that refuses a second experiment and keeps the ended ones,
the guard acting on the counts in Redis, and the nightly/online hand-over under the guard."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from infra.settings import ArmSettings
from serving.experiments import CANARY, CONTROL, ROLLOUT, Experiment, ExperimentStore, assign

USERS = [f"user-{i}" for i in range(20_000)]


def _exp(shares: tuple[float, ...], name: str = "e") -> Experiment:
    return Experiment(name=name, arms=[ArmSettings(name=f"arm{i}", version=f"v000{i + 1}", share=s) for i, s in enumerate(shares)])


def test_assignment_is_sticky_and_matches_the_shares_within_sampling_error() -> None:
    exp = _exp((0.1, 0.3, 0.6))
    first = [assign(exp, u, "salt").name for u in USERS]
    assert first == [assign(exp, u, "salt").name for u in USERS]  # every time, in every process (no state)
    for i, share in enumerate((0.1, 0.3, 0.6)):
        got = first.count(f"arm{i}") / len(USERS)
        assert abs(got - share) < 4 * math.sqrt(share * (1 - share) / len(USERS)), (i, got)


def test_experiments_and_salts_shuffle_users_independently() -> None:
    a = [assign(_exp((0.5, 0.5), "one"), u, "salt").name for u in USERS]
    b = [assign(_exp((0.5, 0.5), "two"), u, "salt").name for u in USERS]
    c = [assign(_exp((0.5, 0.5), "one"), u, "other-salt").name for u in USERS]
    for other in (b, c):
        agree = sum(x == y for x, y in zip(a, other)) / len(USERS)
        assert 0.47 < agree < 0.53  # independent halves agree on half the users


def test_growing_the_first_arm_only_moves_users_into_it() -> None:
    small, large = _exp((0.1, 0.9)), _exp((0.3, 0.7))
    before = {u: assign(small, u, "s").name for u in USERS}
    after = {u: assign(large, u, "s").name for u in USERS}
    assert all(after[u] == "arm0" for u in USERS if before[u] == "arm0")
    assert sum(after[u] == "arm0" for u in USERS) > 2 * sum(before[u] == "arm0" for u in USERS)


def test_shares_must_add_up_and_names_differ() -> None:
    with pytest.raises(ValidationError, match="add up to 0.9"):
        _exp((0.4, 0.5))
    with pytest.raises(ValidationError, match="must differ"):
        Experiment(name="x", arms=[ArmSettings(name="a", version="v0001", share=0.5)] * 2)


def test_the_store_runs_one_experiment_at_a_time_and_keeps_the_history(tmp_path) -> None:
    store = ExperimentStore(tmp_path)
    assert store.current() is None
    store.start(_exp((0.5, 0.5), "first"))
    with pytest.raises(ValueError, match="'first' is running: stop it first"):
        store.start(_exp((0.5, 0.5), "second"))
    assert store.move_arm("arm1", "v0009", only_if="v0002") and not store.move_arm("arm1", "v0010", only_if="v0002")
    assert store.running().served_by("arm1") == ["v0002", "v0009"]
    ended = store.end("stopped", "enough", name="first")
    assert store.running() is None and store.current().outcome == "stopped"
    assert [e.name for e in store.history()] == ["first"] and ended.ended_at
    store.start(_exp((0.5, 0.5), "second"))
    assert store.running().name == "second"


def test_the_guard_acts_on_the_counts_in_redis(settings, tmp_path) -> None:
    from serving.rollout import RolloutGuard
    from streaming.attribution_counts import AttributionCounts, RunningTotals
    from streaming.live_attribution import Increment

    s = settings.model_copy(update={"data_dir": tmp_path, "features": settings.features.model_copy(update={"project": "guard_t"})})
    store, counts = ExperimentStore(s.paths.experiments_dir), AttributionCounts.for_settings(s)
    counts.clear()

    class Pointer:  # the registry's compare-and-set, as the guard uses it
        def __init__(self) -> None:
            self.current = "v0001"

        def promote(self, version: str, only_if_serving: str | None = None) -> bool:
            if only_if_serving is not None and self.current != only_if_serving:
                return False
            self.current = version
            return True

    pointer = Pointer()
    guard = RolloutGuard(s, pointer, store, counts)  # type: ignore[arg-type]
    store.start(Experiment(name="r", kind=ROLLOUT, arms=[ArmSettings(name=CANARY, version="v0002", share=0.1),
                                                         ArmSettings(name=CONTROL, version="v0001", share=0.9)]))
    assert guard.check().action == "wait" and store.running() is not None  # nothing counted yet
    running = RunningTotals()
    running.apply([Increment("v0001", "r/control", "lists", 9000), Increment("v0001", "r/control", "hits", 1800),
                   Increment("v0002", "r/canary", "lists", 1000), Increment("v0002", "r/canary", "hits", 100)])
    counts.write(0, running, now_ms=1)
    assert guard.check().action == "rollback"
    assert store.current().outcome == "rolled_back" and pointer.current == "v0001"
    assert "canary hit rate 0.1000 vs control 0.2000" in store.current().reason
    assert guard.check() is None  # nothing running any more
    counts.clear()


def test_new_versions_are_handed_over_at_once_or_under_the_guard(tmp_path) -> None:
    import torch

    from infra.settings import Settings
    from models.registry import ModelRegistry
    from serving.rollout import on_canary, serve_new_version

    def versions(n: int) -> list[str]:
        return [registry.publish({"w": torch.zeros(1)}, {"kind": "test"}) for _ in range(n)]

    plain = Settings(data_dir=tmp_path / "plain")
    registry = ModelRegistry(plain.paths.models_dir)
    a, b = versions(2)
    assert serve_new_version(plain, registry, a) and serve_new_version(plain, registry, b)
    assert registry.served() == b  # without the guard: promoted at once

    guarded = Settings(data_dir=tmp_path / "guarded", experiments={"rollout": {"guard_new_versions": True}})
    registry = ModelRegistry(guarded.paths.models_dir)
    first, nightly, online1, online2, other = versions(5)
    assert serve_new_version(guarded, registry, first) and registry.served() == first  # nothing to compare with yet
    assert serve_new_version(guarded, registry, nightly)
    exp = ExperimentStore(guarded.paths.experiments_dir).running()
    assert registry.served() == first and exp.kind == ROLLOUT
    assert (exp.arm(CANARY).version, exp.arm(CONTROL).version) == (nightly, first)
    assert on_canary(guarded, nightly)
    # a learner that published the canary moves it on to its newer versions; a stranger's version waits
    assert serve_new_version(guarded, registry, online1, previous=nightly)
    assert serve_new_version(guarded, registry, online2, previous=online1)
    assert not serve_new_version(guarded, registry, other, previous=first)
    exp = ExperimentStore(guarded.paths.experiments_dir).running()
    assert exp.served_by(CANARY) == [nightly, online1, online2] and registry.served() == first


def test_the_cli_says_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    import torch

    from infra.cli import main
    from models.registry import ModelRegistry

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    assert main(["experiment", "start"]) == 2
    assert "say what to compare: `recsys experiment start --name ab --arm" in capsys.readouterr().out
    assert main(["experiment", "start", "--name", "ab", "--arm", "a=v0001"]) == 2
    assert "write it as name=version:share" in capsys.readouterr().out
    assert main(["experiment", "start", "--name", "ab", "--arm", "a=v0001:0.5", "--arm", "b=v0002:0.5"]) == 2
    assert "no model version v0001, v0002 in the registry" in capsys.readouterr().out
    assert main(["rollout", "v0001"]) == 2
    assert "nothing is served yet" in capsys.readouterr().out
    registry = ModelRegistry(tmp_path / "models")
    a, b = (registry.publish({"w": torch.zeros(1)}, {"kind": "test"}) for _ in range(2))
    registry.promote(a)
    assert main(["experiment", "start", "--name", "ab", "--arm", f"a={a}:0.5", "--arm", f"b={b}:0.5"]) == 0
    assert main(["rollout", b]) == 2 and "experiment 'ab' is running: stop it first" in capsys.readouterr().out
    monkeypatch.setenv("RECSYS_REDIS__PORT", "1")  # nothing listens there
    assert main(["experiment", "status"]) == 2 and "start it with `recsys up`" in " ".join(capsys.readouterr().out.split())
    assert main(["experiment", "stop"]) == 0 and main(["rollout", b]) == 0
    assert f"rolling out {b} to 10% of users beside {a}" in " ".join(capsys.readouterr().out.split())
