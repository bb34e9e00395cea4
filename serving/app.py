"""The recommendation API (FastAPI): recommendations, events in, health, model, metrics, admin, /ui.

``create_app(settings)`` wires the parts: the registry watcher (hot swap), the item snapshot
refresher, the recommender and a lazily opened event producer. Run it with ``recsys serve``.
"""


import gc
import hmac
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from features.model_inputs import RegistrySpecCache
from infra.settings import Settings
from models.registry import ModelRegistry
from serving.hot_swap import NOT_SERVED, ModelHolder, ModelLoader, RegistryWatcher, SwapEvent
from serving.item_details import ItemDetails
from serving.impressions import ImpressionLog, impression, new_request_id
from serving.item_snapshot import ItemSnapshotter
from infra.periodic import Periodic
from serving.experiments import ROLLOUT, ExperimentStore, arm_label, assign
from serving.rollout import RolloutGuard, results as experiment_results
from serving.rollout_guard import WAIT
from streaming.attribution_counts import TOTALS, AttributionCounts
from serving.metrics import ApiMetrics
from serving.quality import quality_summary
from serving.recommender import Recommender, event_clock

STATIC = Path(__file__).resolve().parent / "static"
USER_ID = Annotated[str, PathParam(min_length=1, max_length=256, description="the user to recommend for")]


class ScoredItemOut(BaseModel):
    item_id: str
    score: float = Field(description="ranking score in (0, 1), higher first: the candidate ranker's (a version with one), else the TorchRec model's predicted probability of a positive interaction")
    sources: list[str] = Field(description="candidate sources that proposed the item: covisit, embedding, trending, popular")
    title: str | None = Field(default=None, description="with details=true, when the catalogue has it (`recsys catalogue load`)")
    category: str | None = Field(default=None, description="with details=true: the item's categories, '|' between several")


class RecommendationOut(BaseModel):
    request_id: str = Field(description="this list's id: its record in the impressions topic carries it")
    user_id: str
    model_version: str
    arm: str | None = Field(description="the user's experiment arm as '<experiment>/<arm>' (serving.experiments); null outside any experiment")
    cold_start: bool = Field(description="the user has no history yet: trending and popular items")
    recent_items: list[str]
    items: list[ScoredItemOut]
    candidates: dict[str, int]
    timings_ms: dict[str, float]


class BatchRequest(BaseModel):
    user_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1)
    k: int | None = Field(default=None, ge=1)
    filter_seen: bool | None = None
    exclude: dict[str, list[str]] = Field(default_factory=dict, description="per user: items never to return")
    details: bool = Field(default=False, description="add each item's title and category from the catalogue")


class BatchOut(BaseModel):
    results: list[RecommendationOut]


class RejectedEvent(BaseModel):
    index: int
    reason: str
    detail: str


class EventsOut(BaseModel):
    accepted: int
    rejected: list[RejectedEvent] = Field(description="invalid events; each also went to the dead-letter topic")


class ServingContext:
    """Everything the routes share; background threads start in :meth:`start`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ApiMetrics()
        self.registry = ModelRegistry(settings.paths.models_dir)
        self.holder = ModelHolder()
        self.loader = ModelLoader(self.registry, RegistrySpecCache(settings), settings.serving.max_delta_chain)
        self.snapshots = ItemSnapshotter(settings, lambda: self.holder.current, settings.serving.item_refresh_s,
                                         also=lambda: self.holder.arms.values())
        self.experiments = ExperimentStore(settings.paths.experiments_dir)
        self.watcher = RegistryWatcher(self.registry, self.holder, self.loader, settings.serving.watch_interval_s,
                                       prepare=self.snapshots.prepare, on_swap=self._swapped,
                                       wanted=self._experiment_versions)
        self.counts = AttributionCounts.for_settings(settings)
        self.guard = RolloutGuard(settings, self.registry, self.experiments, self.counts)
        self._guard_loop = Periodic("rollout-guard", self._guard_check, settings.experiments.rollout.check_every_s,
                                    lambda e: None)  # Redis down: the next check tries again
        self.recommender = Recommender(settings)
        self.item_details = ItemDetails(settings)
        self.impressions = (ImpressionLog(settings, lambda outcome, n: self.metrics.impressions.labels(outcome).inc(n))
                            if settings.serving.impressions else None)
        self._producer = None
        self._producer_lock = threading.Lock()
        self.started_at = time.time()
        r = settings.redis
        self.redis = redis.Redis(host=r.host, port=r.port, password=r.secret, socket_timeout=2)

    def _guard_check(self) -> None:
        decision = self.guard.check()
        if decision is not None and decision.action != WAIT:
            self.metrics.rollout_decisions.labels(decision.action).inc()
            self.watcher.check()  # a promoted canary serves everyone now

    def _experiment_versions(self) -> set[str]:
        exp = self.experiments.running()
        return exp.versions if exp is not None else set()

    def route(self, user_id: str):  # noqa: ANN201 - (ServedModel | None, arm name | None)
        """The model this user is served and their experiment arm. Outside an experiment, or while
        the arm's version is still loading (or failed to), the served model and no arm: the
        impression then counts for no arm, so an arm's numbers are only its own version's lists."""
        current = self.holder.current
        exp = self.experiments.running()
        if exp is None or current is None:
            return current, None
        arm = assign(exp, user_id, self.settings.experiments.salt)
        model = current if arm.version == current.version else self.holder.arms.get(arm.version)
        return (model, arm_label(exp, arm.name)) if model is not None else (current, None)

    def _swapped(self, event: SwapEvent) -> None:
        self.metrics.swaps.labels(event.outcome).inc()
        gc.freeze()  # the new model's objects join the frozen heap (no collection: that would stall requests)
        if event.outcome not in NOT_SERVED:
            self.metrics.swap_seconds.observe(event.ms / 1000)
            for version in {e.version for e in self.holder.events} - {event.version}:
                self.metrics.model_info.labels(version).set(0)
            self.metrics.model_info.labels(event.version).set(1)

    def start(self) -> None:
        try:
            self.watcher.check()  # serve a model from the first request on, when there is one
        except Exception:  # noqa: BLE001 - the watcher thread retries and reports
            pass
        _freeze_heap()
        self.watcher.start()
        self.snapshots.start()
        self._guard_loop.start()
        if self.impressions is not None:
            self.impressions.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.snapshots.stop()
        self._guard_loop.stop()
        if self.impressions is not None:
            self.impressions.stop()
        if self._producer is not None:
            self._producer.close()

    def producer(self):  # noqa: ANN201 - streaming.producer.EventProducer, imported lazily (kafka client)
        with self._producer_lock:
            if self._producer is None:
                from streaming.producer import EventProducer

                self._producer = EventProducer(self.settings)
            return self._producer


def _freeze_heap() -> None:
    """Move the long-lived objects (model, registry, catalogue) out of the garbage collector's
    sight: otherwise every full collection walks them all and stalls requests for a few hundred ms."""
    gc.collect()
    gc.freeze()


def _json(body: dict) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


class MetricsMiddleware:
    """Latency and status per route template (pure ASGI: Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app, metrics: ApiMetrics) -> None:  # noqa: ANN001 - an ASGI app
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, str(status[0])).inc()


def _require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.ctx.settings.serving.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: set serving.admin_token (RECSYS_SERVING__ADMIN_TOKEN)")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong admin token: send 'Authorization: Bearer <serving.admin_token>'")


def create_app(settings: Settings, background: bool = True) -> FastAPI:
    ctx = ServingContext(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if background:
            ctx.start()
        yield
        ctx.stop()

    app = FastAPI(title="recsys recommendation API", version="1", lifespan=lifespan,
                  description="Top-K recommendations from a TorchRec model over fresh streaming features.")
    app.state.ctx = ctx
    cfg = settings.serving

    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)

    def recommend_one(user_id: str, k: int | None, filter_seen: bool | None, exclude: list[str] = (),
                      details: bool = False) -> dict:
        model, arm = ctx.route(user_id)  # one read: this request finishes on this model even if a swap happens
        if model is None:
            raise HTTPException(503, "no model is served yet: run `recsys retrain` (the server picks it up by itself)")
        k = min(k or cfg.default_k, cfg.max_k)
        snapshot = ctx.snapshots.get(model.version)
        rec = ctx.recommender.recommend(model, snapshot, user_id, k, filter_seen, frozenset(exclude))
        for stage, ms in rec.timings_ms.items():
            ctx.metrics.stage.labels(stage).observe(ms / 1000)
        for source, n in rec.candidates.items():
            ctx.metrics.candidates.labels(source).observe(n)
        if rec.cold_start:
            ctx.metrics.cold_start.inc()
        items = [{"item_id": i.item_id, "score": i.score, "sources": i.sources} for i in rec.items]
        request_id = new_request_id()
        if ctx.impressions is not None:  # a buffer append: the broker is never waited for
            ctx.impressions.log(impression(request_id, rec, arm, event_clock(snapshot)))
        if details:
            try:
                known = ctx.item_details.of([i["item_id"] for i in items])
            except redis.RedisError:
                known = {}  # details are an extra: the list itself is still right
            for item in items:
                item.update(known.get(item["item_id"], {}))
        return {"request_id": request_id, "user_id": rec.user_id, "model_version": rec.model_version, "arm": arm,
                "cold_start": rec.cold_start,
                "recent_items": rec.recent_items, "items": items,
                "candidates": rec.candidates, "timings_ms": {s: round(v, 3) for s, v in rec.timings_ms.items()}}

    # async + inline: the work is CPU-bound and the GIL serialises it anyway, so a thread-pool hop per
    # request only adds latency; the body is built as a dict and serialised once with orjson
    # (``response_model`` still documents it in the OpenAPI schema)
    @app.get("/recommendations/{user_id}", response_model=RecommendationOut, tags=["recommendations"])
    async def get_recommendations(user_id: USER_ID, k: Annotated[int | None, Query(ge=1, le=cfg.max_k)] = None,
                            filter_seen: bool | None = None,
                            exclude: Annotated[list[str], Query(max_length=1000, description="items never to return")] = [],  # noqa: B006 - FastAPI copies defaults
                            details: Annotated[bool, Query(description="add each item's title and category from the catalogue")] = False) -> RecommendationOut:
        """Top-K items for one user, with scores and the candidate sources of each item."""
        return _json(recommend_one(user_id, k, filter_seen, exclude, details))

    @app.post("/recommendations", response_model=BatchOut, tags=["recommendations"])
    async def batch_recommendations(body: BatchRequest) -> Response:
        """Top-K for several users in one call."""
        if len(body.user_ids) > cfg.max_batch_users:
            raise HTTPException(422, f"{len(body.user_ids)} users in one request, the limit is {cfg.max_batch_users} "
                                     "(serving.max_batch_users): split the request")
        if body.k is not None and body.k > cfg.max_k:
            raise HTTPException(422, f"k={body.k} is above serving.max_k={cfg.max_k}: ask for fewer items")
        return _json({"results": [recommend_one(u, body.k, body.filter_seen, body.exclude.get(u, []), body.details)
                                  for u in body.user_ids]})

    @app.get("/popular", tags=["recommendations"])
    def popular(k: Annotated[int, Query(ge=1, le=10_000)] = 10) -> dict:
        """The served model's most trained-on items (the non-personalised baseline)."""
        model = ctx.holder.current
        if model is None:
            raise HTTPException(503, "no model is served yet: run `recsys retrain`")
        return {"model_version": model.version, "items": model.catalogue[:k].tolist()}

    @app.post("/events", response_model=EventsOut, status_code=202, tags=["events"],
              responses={422: {"description": "every event was invalid (all went to the dead-letter topic)"}})
    def post_events(events: Annotated[list[dict[str, Any]] | dict[str, Any], Body(
            description="one event or a list of events (the JSON of streaming.events.Event)")]) -> Any:
        """Validate events and produce them to the events topic; invalid ones go to the DLQ with the reason."""
        batch = events if isinstance(events, list) else [events]
        if not batch:
            raise HTTPException(422, "no events in the request: send an event object or a non-empty list")
        from infra.kafka_clients import BrokerUnavailable

        try:
            producer = ctx.producer()
        except BrokerUnavailable as e:
            raise HTTPException(503, f"the event broker is unreachable ({e}); retry later") from e
        rejected = []
        with ctx._producer_lock:
            for i, e in enumerate(batch):
                problem = producer.send_or_reason(e)
                if problem is not None:  # dead-lettered with its reason
                    rejected.append(RejectedEvent(index=i, reason=problem.reason, detail=problem.detail))
            producer.flush(timeout=10)
        accepted = len(batch) - len(rejected)
        ctx.metrics.events.labels("accepted").inc(accepted)
        ctx.metrics.events.labels("rejected").inc(len(rejected))
        out = EventsOut(accepted=accepted, rejected=rejected)
        if not accepted:
            return JSONResponse(out.model_dump(), status_code=422)
        return out

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok", "uptime_s": round(time.time() - ctx.started_at, 1)}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready; the body says why"}})
    def readyz() -> Any:
        """Ready to serve: a model is loaded and Redis answers."""
        problems = []
        if ctx.holder.current is None:
            problems.append("no model loaded (run `recsys retrain`)")
        try:
            ctx.redis.ping()
        except redis.RedisError as e:
            problems.append(f"Redis unreachable at {settings.redis.host}:{settings.redis.port} ({e}): start it with `recsys up`")
        body = {"ready": not problems, "problems": problems,
                "model_version": ctx.holder.current.version if ctx.holder.current else None}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/model", tags=["operations"])
    def model_info() -> dict:
        """Served version, how it was loaded (full or deltas), lineage, swap history and rejections."""
        m = ctx.holder.current
        served = None
        if m is not None:
            meta = m.meta
            served = {"version": m.version, "loaded_from": m.lineage.loaded_from, "base_version": m.lineage.base_version,
                      "applied_deltas": list(m.lineage.deltas), "loaded_at": m.lineage.loaded_at,
                      "load_ms": round(m.lineage.load_ms, 2), "catalogue_items": len(m.catalogue),
                      "lineage": {k: meta.get(k) for k in ("table_version", "code_version", "feature_registry_digest",
                                                           "created_at", "base_version", "served_version")},
                      "metrics": meta.get("metrics"), "popularity": meta.get("popularity")}
        exp = ctx.experiments.current()
        last = ctx.guard.last
        return {"served": served, "registry_current": ctx.registry.served(), "registry_history": ctx.registry.history(),
                "swaps": [e.to_dict() for e in ctx.holder.events], "rejected": ctx.holder.rejected,
                "experiment": exp.model_dump() if exp else None, "arms_loaded": sorted(ctx.holder.arms),
                "guard": last.decision.to_dict() | {"experiment": last.experiment} if last.decision else None}

    @app.get("/experiment", tags=["operations"])
    def experiment() -> Any:
        """The running (or last) experiment or rollout: each arm's live counts and its hit rate
        against the control's with an interval (from the attribution job's counts)."""
        exp = ctx.experiments.current()
        if exp is None:
            return JSONResponse({"detail": "no experiment yet: `recsys experiment start` or `recsys rollout VERSION`"}, 404)
        try:
            return experiment_results(exp, ctx.counts, settings.experiments.confidence)
        except redis.RedisError as e:
            raise HTTPException(503, f"the attribution counts cannot be read from Redis ({e})") from e

    @app.get("/stats", tags=["operations"])
    def stats() -> dict:
        """What the dashboard shows: feature freshness and the stream job's counters."""
        snap = ctx.snapshots.current
        out: dict[str, Any] = {"time": time.time(), "item_snapshot": None, "stream": None}
        if snap is not None:
            out["item_snapshot"] = {"event_time_ms": snap.event_time_ms, "read_at": snap.read_at, "read_ms": round(snap.read_ms, 2),
                                    "age_s": round(time.time() - snap.read_at, 3), "trending": snap.trending[:10]}
            ctx.metrics.snapshot_age.set(time.time() - snap.read_at)
        try:
            from streaming.job.stream_metrics import metrics_dir, totals

            counters = totals(metrics_dir(settings))
            out["stream"] = {k: v for k, v in counters.items() if not k.startswith("offset_p")} or None
        except Exception as e:  # noqa: BLE001 - the stream job may run elsewhere: the dashboard says so
            out["stream_error"] = str(e)
        return out

    @app.get("/quality", tags=["operations"])
    def quality() -> dict:
        """The last `recsys evaluate` replay (served pipeline vs baselines) and the demo's held-out day."""
        return quality_summary(settings.paths)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (with live attribution's counts, read from Redis now)."""
        try:
            for t in ctx.counts.all():
                for what in TOTALS:
                    ctx.metrics.attributed.labels(t.version, t.arm, what).set(getattr(t, what))
        except redis.RedisError:
            pass  # the API's own metrics still answer
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(_require_admin)])
    def admin_reload() -> dict:
        """Check the registry now (also retries a rejected version)."""
        event = ctx.watcher.check(force=True)
        return {"event": event.to_dict() if event else None, "served": ctx.holder.current.version if ctx.holder.current else None}

    @app.post("/admin/rollback", tags=["admin"], dependencies=[Depends(_require_admin)])
    def admin_rollback() -> dict:
        """Serve the previously promoted version (same as `recsys model rollback`)."""
        try:
            previous = ctx.registry.rollback()
        except ValueError as e:
            raise HTTPException(409, str(e)) from e
        event = ctx.watcher.check(force=True)
        return {"rolled_back_to": previous, "event": event.to_dict() if event else None}

    @app.post("/admin/promote/{version}", tags=["admin"], dependencies=[Depends(_require_admin)])
    def admin_promote(version: Annotated[str, PathParam(pattern=r"^v\d{1,8}$")]) -> dict:
        """Serve a specific registry version."""
        if version not in ctx.registry.versions():
            raise HTTPException(404, f"no model version {version}: pick one of {ctx.registry.versions()}")
        try:
            ctx.registry.promote(version)
        except ValueError as e:
            raise HTTPException(409, str(e)) from e
        event = ctx.watcher.check(force=True)
        return {"promoted": version, "event": event.to_dict() if event else None}

    @app.post("/admin/experiment/stop", tags=["admin"], dependencies=[Depends(_require_admin)])
    def admin_experiment_stop() -> dict:
        """End the running experiment or rollout now (the pointer stays where it is)."""
        try:
            ended = ctx.experiments.end("stopped", "stopped through the admin API")
        except ValueError as e:
            raise HTTPException(409, str(e)) from e
        return {"ended": ended.model_dump()}

    @app.post("/admin/rollout/{action}", tags=["admin"], dependencies=[Depends(_require_admin)])
    def admin_rollout(action: Annotated[str, PathParam(pattern="^(promote|rollback)$")]) -> dict:
        """Override the guard: promote the running rollout's canary now, or roll it back."""
        exp = ctx.experiments.running()
        if exp is None or exp.kind != ROLLOUT:
            raise HTTPException(409, "no rollout is running")
        if action == "promote":
            ctx.guard.promote(exp, "promoted by hand through the admin API")
        else:
            ctx.guard.roll_back(exp, "rolled back by hand through the admin API")
        event = ctx.watcher.check(force=True)
        return {"experiment": ctx.experiments.current().model_dump(), "event": event.to_dict() if event else None}

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def ui() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/", include_in_schema=False)
    def root() -> dict:
        return {"service": "recsys", "docs": "/docs", "dashboard": "/ui", "openapi": "/openapi.json"}

    return app


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_environment`` (settings from file + env)."""
    from infra.processes import received_settings

    return create_app(received_settings())
