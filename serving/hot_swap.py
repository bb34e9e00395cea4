"""Follow the registry's serving pointer: merge deltas (or load full versions) and swap atomically.

The watcher thread polls ``serving.json``. When the pointer moves to a version ``T``:

1. if ``T`` descends from the served version through published deltas (``T.base_version`` ->
   ... -> served), the deltas are checked against the registry manifest and merged in order onto
   the served weights (``models.delta.merge`` checks base and merged digests);
2. otherwise (a gap, a rollback, a delta that was rejected before) the full version is loaded
   and verified;
3. the new model must pass a smoke prediction and match the features the registry defines;
4. then ``holder.current`` is replaced: one reference assignment, so readers see the old model
   or the new one, never a mix, and requests in flight finish on the model they started with.

Anything that fails leaves the current model serving; the failure is recorded (GET /model,
``recsys_model_swaps_total{outcome="rejected"}``) and that target is not retried until the
pointer moves again or an admin asks for a reload. The previous model stays in memory, so a
rollback to it is instant.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from features.model_inputs import FeatureSpec, FeatureSpecMismatch, check_compatible
from models import delta as model_delta
from infra.periodic import Periodic
from models.id_table import IDS_FILE, model_ids
from models.categories import CATEGORIES_FILE, ItemCategories
from models.list_ranker import RANKER_FILE, ListRanker
from models.similarity import SIMILARITY_FILE, SIMILARITY_SOURCE, SimilarityTable
from models.registry import CATALOGUE, META, ModelIntegrityError, ModelRegistry, VersionMeta, delta_dir_name
from serving.served_model import Lineage, ServedModel, SmokeTestFailed

NOT_SERVED = ("rejected", "arm")  # swap outcomes after which the version does not serve everyone
LOAD_ERRORS = (ModelIntegrityError, model_delta.DeltaError, FeatureSpecMismatch, SmokeTestFailed, OSError,
               KeyError, ValueError, RuntimeError)


@dataclass(frozen=True)
class SwapEvent:
    version: str
    outcome: str  # "full", "delta", "memory" (the previous model or an arm, kept in memory), "arm" (loaded for an experiment) or "rejected"
    at: float
    ms: float
    detail: str = ""

    def to_dict(self) -> dict:
        return {"version": self.version, "outcome": self.outcome, "at": self.at, "ms": round(self.ms, 2),
                "detail": self.detail}


class ModelLoader:
    """Builds a :class:`ServedModel` for a registry version, through deltas when it can."""

    def __init__(self, registry: ModelRegistry, current_spec: Callable[[], FeatureSpec], max_chain: int = 20) -> None:
        self.registry = registry
        self.current_spec = current_spec
        self.max_chain = max_chain

    def delta_chain(self, served: str, target: str, skip: set[str] = frozenset()) -> list[tuple[str, str]] | None:
        """[(version, its base)] from ``served`` to ``target`` in apply order, or None when there is a gap."""
        chain: list[tuple[str, str]] = []
        v = target
        while v != served:
            if len(chain) >= self.max_chain or v in skip:
                return None
            try:
                base = self.registry.meta(v).base_version
            except (OSError, ValueError):
                return None
            if not base or not self.registry.has_delta(v, base):
                return None
            chain.append((v, base))
            v = base
        return chain[::-1]

    def full(self, version: str) -> ServedModel:
        started = time.perf_counter()
        state, meta = self.registry.load(version)
        self._check_features(meta)
        items, counts = self.registry.catalogue(version)
        return ServedModel.build(version, state, meta, items, counts,
                                 Lineage("full", load_ms=(time.perf_counter() - started) * 1000), ids=self._ids(version, meta),
                                 **self._nightly_parts(version, meta))

    def via_deltas(self, served: ServedModel, chain: list[tuple[str, str]]) -> ServedModel:
        started = time.perf_counter()
        state, digest = served.state, served.digest
        for version, base in chain:
            # the delta and the small files, not the full weights: that is the point of a delta
            self.registry.verify(version, only=(f"{delta_dir_name(base)}/", META, CATALOGUE, IDS_FILE))
            state, digest = model_delta.merge_with_digest(self.registry.delta_dir(version, base), state,
                                                          base, base_digest=digest)
        target = chain[-1][0]
        meta = self.registry.meta(target)
        self._check_features(meta)
        items, counts = self.registry.catalogue(target)
        return ServedModel.build(target, state, meta, items, counts, Lineage(
            "delta", tuple(f"{v}/{delta_dir_name(b)}" for v, b in chain), served.version,
            load_ms=(time.perf_counter() - started) * 1000), warm_up=False, digest=digest, ids=self._ids(target, meta),
            **self._nightly_parts(target, meta, served))

    def _ids(self, version: str, meta: VersionMeta):  # noqa: ANN202 - models.id_table.ModelIds
        return model_ids(meta.model_settings, self.registry.path(version))

    def _nightly_parts(self, version: str, meta: dict, served: ServedModel | None = None) -> dict:
        """The version's item similarity and candidate ranker: its own files, or (an online
        version) its nightly base's, which the served model may hold already."""
        source = meta.get(SIMILARITY_SOURCE, version)
        if served is not None and served.similarity.source == source:
            return {"similarity": served.similarity, "ranker": served.ranker, "categories": served.categories}
        directory = self.registry.path(source)
        similarity, ranker, categories = directory / SIMILARITY_FILE, directory / RANKER_FILE, directory / CATEGORIES_FILE
        return {"similarity": SimilarityTable.load(similarity, source) if similarity.is_file() else SimilarityTable.empty(),
                "ranker": ListRanker.load(ranker) if ranker.is_file() else None,
                "categories": ItemCategories.load(categories) if categories.is_file() else None}

    def _check_features(self, meta: dict) -> None:
        check_compatible(FeatureSpec.from_dict(meta["features"]), self.current_spec())


class ModelHolder:
    """The served model and its history; ``current`` is read without a lock (one reference)."""

    def __init__(self, keep_events: int = 100) -> None:
        self.current: ServedModel | None = None
        self.previous: ServedModel | None = None
        self.arms: dict[str, ServedModel] = {}  # versions an experiment serves beside current (one dict swap per change)
        self.events: list[SwapEvent] = []
        self.rejected: dict[str, str] = {}  # target version -> why (not retried until asked)
        self._keep = keep_events
        self._lock = threading.Lock()  # one swap at a time (watcher vs admin)

    def record(self, event: SwapEvent) -> None:
        self.events = [*self.events[-(self._keep - 1):], event]

    def served_versions(self) -> list[str]:
        """Versions in the order they started serving."""
        return [e.version for e in self.events if e.outcome not in NOT_SERVED]


class RegistryWatcher:
    """Polls the serving pointer and swaps models (in a daemon thread, or on demand)."""

    def __init__(self, registry: ModelRegistry, holder: ModelHolder, loader: ModelLoader, interval_s: float = 0.5,
                 prepare: Callable[[ServedModel], None] | None = None,
                 on_swap: Callable[[SwapEvent], None] | None = None,
                 wanted: Callable[[], set[str]] | None = None) -> None:
        self.registry = registry
        self.holder = holder
        self.loader = loader
        self.interval_s = interval_s
        self.prepare = prepare or (lambda m: None)  # e.g. read the new catalogue's features before the swap
        self.on_swap = on_swap or (lambda e: None)
        self.wanted = wanted or set  # the versions a running experiment serves (each loaded beside current)
        self._loop = Periodic("registry-watcher", self.check, interval_s, self._report)

    def check(self, force: bool = False) -> SwapEvent | None:
        """Bring the served model in line with the registry pointer, and the experiment's arms in
        line with its versions; returns what happened to the pointer's model, if anything."""
        event = self._follow_pointer(force)
        self._sync_arms(force)
        return event

    def _follow_pointer(self, force: bool) -> SwapEvent | None:
        target = self.registry.served()
        h = self.holder
        if target is None or (h.current is not None and h.current.version == target):
            return None
        if target in h.rejected and not force:
            return None
        with h._lock:
            return self._swap_to(target)

    def _sync_arms(self, force: bool) -> None:
        """Load each version an experiment serves that is not the pointer's (through deltas from
        the served model when it can); drop the ones no longer wanted. A version that fails to
        load is recorded as rejected, and its arm's users get the served model meanwhile."""
        h = self.holder
        wanted = self.wanted() - ({h.current.version} if h.current else set())
        if set(h.arms) == wanted:
            return
        arms = {v: m for v, m in h.arms.items() if v in wanted}
        for version in sorted(wanted - set(arms)):
            if version in h.rejected and not force:
                continue
            started = time.perf_counter()
            with h._lock:
                try:
                    arms[version] = self._load(version, h.current)[0]
                except LOAD_ERRORS as e:
                    h.rejected[version] = str(e)
                    event = SwapEvent(version, "rejected", time.time(), (time.perf_counter() - started) * 1000,
                                      f"experiment arm: {e}")
                else:
                    h.rejected.pop(version, None)
                    event = SwapEvent(version, "arm", time.time(), (time.perf_counter() - started) * 1000,
                                      "loaded for an experiment arm")
            h.record(event)
            self.on_swap(event)
        h.arms = arms  # one reference assignment, as for current

    def _load(self, target: str, current: ServedModel | None) -> tuple[ServedModel, str]:
        """``target`` built from what is in memory ("memory"), the served model's deltas ("delta") or
        its files ("full"), with its item snapshot prepared."""
        h = self.holder
        if h.previous is not None and h.previous.version == target:
            new, outcome = h.previous, "memory"
        elif target in h.arms:  # an experiment's arm becoming the served version (a promoted canary)
            new, outcome = h.arms[target], "memory"
        else:
            chain = self.loader.delta_chain(current.version, target, set(h.rejected)) if current else None
            if chain:
                new, outcome = self.loader.via_deltas(current, chain), "delta"
            else:
                new, outcome = self.loader.full(target), "full"
        try:
            self.prepare(new)
        except Exception:  # noqa: BLE001 - e.g. Redis busy: requests read item features directly until the next refresh
            pass
        return new, outcome

    def _swap_to(self, target: str) -> SwapEvent:
        h = self.holder
        started = time.perf_counter()
        current = h.current
        try:
            new, outcome = self._load(target, current)
        except LOAD_ERRORS as e:
            h.rejected[target] = str(e)
            event = SwapEvent(target, "rejected", time.time(), (time.perf_counter() - started) * 1000, str(e))
        else:
            h.previous, h.current = current, new  # the swap: readers see old or new, never a mix
            h.rejected.pop(target, None)
            detail = ", ".join(new.lineage.deltas) if outcome == "delta" else ""
            event = SwapEvent(target, outcome, time.time(), (time.perf_counter() - started) * 1000, detail)
        h.record(event)
        self.on_swap(event)
        return event

    def start(self) -> None:
        self._loop.start()

    def _report(self, e: Exception) -> None:
        self.holder.record(SwapEvent("?", "rejected", time.time(), 0.0, f"watcher error: {e}"))

    def stop(self) -> None:
        self._loop.stop()
