"""The recommendation API over the real chain: broker -> PyFlink job -> Redis (Feast layout) +
Delta -> retrain -> registry -> HTTP server (uvicorn, real sockets) with its hot-swap watcher.

One stream job and one server serve every test of the module (starting them costs ~20 s).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import Counter

import httpx
import pytest
import schemathesis
import uvicorn
from prometheus_client import generate_latest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from batch.nightly import retrain
from batch.evaluate.prequential_report import Report, Scores, write_report
from streaming.events import DAY_MS
from features import names
from features.store import apply, feature_store
from infra.processes import free_port
from infra.settings import ServingSettings, TrainingSettings
from models.config import ModelSettings
from models.registry import ModelRegistry
from models.synthetic import publish_nudged_version
from batch.evaluate import holdout
from serving.app import create_app
from serving.experiments import CANARY, CONTROL, Experiment, ExperimentStore, assign
from infra.settings import ArmSettings
from streaming.attribution_counts import AttributionCounts, RunningTotals
from streaming.live_attribution import Increment
from serving.online_features import OnlineFeatureReader
from streaming.job import stream_runner
from streaming.producer import EventProducer
from streaming.replay import load_events
from streaming.topics import scan_topic
from tests.conftest import isolated

N_EVENTS = 20_000
TOKEN = "test-admin-token"
pytestmark = pytest.mark.timeout(900)


class Server:
    """uvicorn in a thread of this process, so tests can also reach the app's internals."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.settings = settings
        self.app = create_app(settings)
        self.ctx = self.app.state.ctx
        self.url = f"http://127.0.0.1:{settings.serving.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.serving.port,
                                                     log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "Server":
        self._thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the API did not become ready within 60 s")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def wait_for(self, version: str, timeout_s: float = 30) -> dict:
        """/model once the watcher served or rejected ``version``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = httpx.get(self.url + "/model", timeout=5).json()
            if (m["served"] and m["served"]["version"] == version) or version in m["rejected"]:
                return m
            time.sleep(0.05)
        raise TimeoutError(f"the server neither served nor rejected {version} within {timeout_s}s")


@pytest.fixture(scope="module")
def stack(stack_settings, tmp_path_factory, ml100k_path):
    s = isolated(stack_settings, tmp_path_factory.mktemp("serving"), checkpoint_interval_ms=1000, lake_flush_ms=500)
    s = s.model_copy(update={
        "model": ModelSettings(user_buckets=5_000, item_buckets=5_000, embedding_dim=16),
        "training": TrainingSettings(validation_days=3.0, epochs=1),
        # every candidate source on (the defaults keep only similar + popular), so their mechanics are tested
        "serving": ServingSettings(port=free_port(), admin_token=TOKEN, watch_interval_s=0.05, item_refresh_s=0.2,
                                   covisit_candidates=50, embedding_candidates=50, trending_candidates=50,
                                   trending_slots=1),
    })
    apply(s)
    events = load_events(ml100k_path).events[:N_EVENTS]
    with EventProducer(s) as producer:
        producer.send_many(events)
    stream_runner.start(s, fresh=True)
    try:
        stream_runner.wait_idle(s, N_EVENTS, timeout_s=300)
        first = retrain.run(s, progress=False)
        assert first.promoted and first.version == "v0001"
        with Server(s) as server:
            yield server, events
    finally:
        stream_runner.stop(s)


def _get(server: Server, path: str, **params) -> httpx.Response:
    return httpx.get(server.url + path, params=params, timeout=10)


def test_recommendations_for_known_and_cold_users(stack):
    server, events = stack
    user = events[-1].user_id
    r = _get(server, f"/recommendations/{user}", k=7)
    assert r.status_code == 200, r.text
    body = r.json()
    items = [i["item_id"] for i in body["items"]]
    assert len(items) == 7 and len(set(items)) == 7
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    assert body["model_version"] == "v0001" and not body["cold_start"]
    assert body["recent_items"] and not set(items) & set(body["recent_items"])  # consumed items filtered
    assert {"covisit", "embedding", "trending"} <= {s for i in body["items"] for s in i["sources"]} | set(body["candidates"])
    unfiltered = _get(server, f"/recommendations/{user}", k=50, filter_seen="false").json()
    assert len(unfiltered["items"]) == 50

    cold = _get(server, "/recommendations/someone-never-seen", k=5).json()
    assert cold["cold_start"] and len(cold["items"]) == 5
    assert all(set(i["sources"]) <= {"trending", "popular"} for i in cold["items"])

    batch = httpx.post(server.url + "/recommendations", json={"user_ids": [user, "nobody"], "k": 3}, timeout=10)
    assert batch.status_code == 200 and [len(x["items"]) for x in batch.json()["results"]] == [3, 3]


@pytest.mark.parametrize("path, params", [("/recommendations/1", {"k": 0}), ("/recommendations/1", {"k": 10_000}),
                                          ("/recommendations/1", {"k": "ten"})])
def test_invalid_input_is_a_clear_4xx(stack, path, params):
    server, _ = stack
    r = _get(server, path, **params)
    assert r.status_code == 422 and "k" in r.text
    too_many = httpx.post(server.url + "/recommendations", json={"user_ids": ["u"] * 101}, timeout=10)
    assert too_many.status_code == 422 and "max_batch_users" in too_many.text


def test_online_reader_returns_what_feast_returns(stack):
    server, events = stack
    s = server.settings
    store = feature_store(s)
    for key, view_names, ids in [(names.USER_KEY, [names.USER_STATS, names.USER_RECENT], ["1", events[5].user_id, "nobody"]),
                                 (names.ITEM_KEY, [names.ITEM_STATS, names.ITEM_POPULARITY, names.ITEM_COVISIT],
                                  [events[0].item_id, events[-1].item_id, "no-such-item"])]:
        refs = [f"{v}:{f.name}" for v in view_names for f in store.get_feature_view(v).features]
        ours = OnlineFeatureReader(s, refs, key).read_dicts(ids)
        theirs = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids], full_feature_names=True).to_dict()
        for n, entity in enumerate(ids):
            for ref in refs:
                want = theirs[ref.replace(":", "__")][n]
                assert ours[n][ref] == want, (entity, ref, ours[n][ref], want)
        assert any(v is not None for v in ours[0].values()) and all(v is None for v in ours[2].values())


def test_post_events_produces_valid_and_dead_letters_invalid(stack):
    server, events = stack
    s = server.settings
    before = scan_topic(s, s.topics.events, idle_ms=300).records
    good = {"event_id": "api-1", "user_id": "api-user", "item_id": "50", "event_type": "click",
            "event_time": events[-1].event_time + 1000}
    r = httpx.post(server.url + "/events", json=good, timeout=10)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "rejected": []}
    bad = {"event_id": "api-2", "user_id": "api-user", "item_id": "50", "event_type": "teleport", "event_time": 1}
    mixed = httpx.post(server.url + "/events", json=[{**good, "event_id": "api-3"}, bad], timeout=10)
    assert mixed.status_code == 202
    assert mixed.json()["accepted"] == 1 and [x["index"] for x in mixed.json()["rejected"]] == [1]
    only_bad = httpx.post(server.url + "/events", json=[bad], timeout=10)
    assert only_bad.status_code == 422 and only_bad.json()["rejected"][0]["reason"]
    huge = {**good, "event_id": "api-4", "context": {"blob": "x" * (s.producer.max_event_bytes + 1)}}
    too_big = httpx.post(server.url + "/events", json=huge, timeout=10)
    assert too_big.status_code == 422 and too_big.json()["rejected"][0]["reason"] == "oversize"
    assert scan_topic(s, s.topics.events, idle_ms=300).records == before + 2
    dlq = scan_topic(s, s.topics.dlq, idle_ms=300)
    assert dlq.records >= 3 and sum(dlq.reasons.values()) == dlq.records
    assert {only_bad.json()["rejected"][0]["reason"], "oversize"} <= set(dlq.reasons)  # the API reports the DLQ's reason


def test_health_model_and_metrics(stack):
    server, _ = stack
    assert _get(server, "/healthz").json()["status"] == "ok"
    ready = _get(server, "/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"]
    model = _get(server, "/model").json()
    assert model["served"]["lineage"]["table_version"] is not None
    assert model["served"]["metrics"]["auc"] > 0.5
    _get(server, "/recommendations/1")
    text = _get(server, "/metrics").text
    assert 'recsys_http_request_seconds_bucket{le="0.025",route="/recommendations/{user_id}"}' in text
    assert "recsys_recommend_stage_seconds" in text and "recsys_model_info" in text


def _impressions(server: Server, want: int) -> dict[str, dict]:
    """The impressions topic by request id, once the log has sent ``want`` lists."""
    import orjson

    log = server.ctx.impressions
    deadline = time.monotonic() + 30
    while log.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: dict[str, dict] = {}
    while time.monotonic() < deadline:
        seen.clear()
        scan_topic(server.settings, server.settings.topics.impressions, idle_ms=300,
                   visit=lambda r: seen.setdefault(orjson.loads(r.value)["request_id"], orjson.loads(r.value)))
        if len(seen) >= want:
            break
    return seen


def test_every_served_list_is_in_the_impressions_topic(stack):
    server, events = stack
    users = sorted({e.user_id for e in events[-200:]})[:12]
    served = [_get(server, f"/recommendations/{u}", k=5).json() for u in users]
    batch = httpx.post(server.url + "/recommendations", json={"user_ids": users[:3], "k": 4}, timeout=10).json()
    served += batch["results"]
    served.append(_get(server, "/recommendations/someone-new-to-the-log", k=3).json())  # cold start is logged too
    assert len({r["request_id"] for r in served}) == len(served)  # every list its own id, batch members included
    logged = _impressions(server, len(served))
    for r in served:
        record = logged[r["request_id"]]
        assert record["user_id"] == r["user_id"] and record["model_version"] == r["model_version"]
        assert [(i["item_id"], i["position"], i["sources"]) for i in record["items"]] == \
            [(i["item_id"], p, i["sources"]) for p, i in enumerate(r["items"])]
        assert [i["score"] for i in record["items"]] == pytest.approx([i["score"] for i in r["items"]])
        assert record["served_at_ms"] > 0 and record["arm"] is None
        assert record["event_clock_ms"] is None or record["event_clock_ms"] <= events[-1].event_time + DAY_MS
    text = _get(server, "/metrics").text
    sent = re.search(r'recsys_impressions_total\{outcome="sent"\} ([0-9.e+]+)', text)
    assert sent and float(sent[1]) >= len(served)
    assert 'recsys_impressions_total{outcome="dropped_buffer_full"}' not in text


def test_requests_never_wait_for_a_dead_broker(stack):
    """The API on a broker port nothing listens on: every list is served, the log's losses are counted."""
    server, _ = stack
    s = server.settings
    dead = s.model_copy(update={"broker": s.broker.model_copy(update={"port": free_port()}),
                                "serving": s.serving.model_copy(update={"port": free_port(), "impression_retry_s": 30.0})})
    with Server(dead) as down:
        codes = [_get(down, f"/recommendations/{u}", k=5).status_code for u in ("1", "2", "3", "4", "5", "6") * 5]
        assert codes == [200] * 30
        assert _get(down, "/readyz").status_code == 200  # the log is not what readiness is about
    # stopped: what was held was tried once more; every list is accounted for, none silently gone
    text = generate_latest(down.ctx.metrics.registry).decode()
    counted = {m[0]: float(m[1]) for m in re.findall(r'recsys_impressions_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)}
    assert counted.get("sent", 0) == 0
    assert counted.get("dropped_buffer_full", 0) + counted.get("dropped_send_failed", 0) == 30, counted


def test_admin_endpoints_need_the_token(stack):
    server, _ = stack
    assert httpx.post(server.url + "/admin/reload", timeout=10).status_code == 401
    wrong = httpx.post(server.url + "/admin/reload", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "admin token" in wrong.text
    ok = httpx.post(server.url + "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["served"]


def test_hot_swap_under_load_with_one_bad_delta(stack):
    server, events = stack
    registry = ModelRegistry(server.settings.paths.models_dir)
    users = sorted({e.user_id for e in events})[:200] + ["cold-user"]
    stop = threading.Event()
    failures: list[str] = []
    seen: list[list[str]] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        versions: list[str] = []
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.get(f"{server.url}/recommendations/{rng.choice(users)}", params={"k": 10})
                    if r.status_code != 200 or len(r.json()["items"]) != 10:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        versions.append(r.json()["model_version"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))
        seen.append(versions)

    clients = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    try:
        time.sleep(0.5)
        published = []
        for step in range(5):
            version = publish_nudged_version(registry, step, wrong_base=(step == 2))
            registry.promote(version)
            published.append(version)
            server.wait_for(version)
            time.sleep(0.3)
    finally:
        stop.set()
        for c in clients:
            c.join()
    model = server.wait_for(published[-1])
    swaps = [(e["version"], e["outcome"]) for e in model["swaps"]]
    bad = published[2]
    assert (bad, "rejected") in swaps and "digest mismatch" in model["rejected"][bad]
    assert [v for v, o in swaps if o != "rejected"] == ["v0001", *published[:2], *published[3:]]
    assert dict(swaps)[published[3]] == "full"  # its delta is based on the rejected version: a gap
    assert [o for v, o in swaps if v in (published[0], published[1], published[4])] == ["delta"] * 3
    assert not failures, failures[:5]
    order = {v: i for i, v in enumerate(["v0001", *published])}
    total = Counter(v for vs in seen for v in vs)
    assert sum(total.values()) > 100 and bad not in total
    for versions in seen:  # each client only ever moves forward
        ranks = [order[v] for v in versions]
        assert ranks == sorted(ranks)


def test_corrupted_delta_file_is_rejected_and_rollback_is_instant(stack):
    server, _ = stack
    registry = ModelRegistry(server.settings.paths.models_dir)
    served_before = server.ctx.holder.current.version
    server.ctx.watcher.stop()  # take the watcher out, so the corruption lands before it looks
    try:
        version = publish_nudged_version(registry, 99)
        registry.promote(version)
        delta_file = registry.path(version) / f"delta-from-{served_before}" / "delta.safetensors"
        data = bytearray(delta_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        delta_file.write_bytes(bytes(data))
        event = server.ctx.watcher.check()
        assert event.outcome == "rejected" and "does not match its sha256" in event.detail
        assert server.ctx.holder.current.version == served_before
        registry.rollback()  # the registry points back at the version being served: nothing to load
        assert server.ctx.watcher.check() is None
        r = httpx.post(server.url + f"/admin/promote/{version}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 409 or r.json()["event"]["outcome"] == "rejected"
    finally:
        registry.promote(served_before)
        server.ctx.watcher.start()


def test_a_new_event_changes_recent_items_and_covisit_candidates(stack):
    server, events = stack
    user = events[-1].user_id
    before = _get(server, f"/recommendations/{user}", k=100).json()
    store = feature_store(server.settings)
    candidates = [e.item_id for e in events[-2000:] if e.item_id not in before["recent_items"]]
    covisit = store.get_online_features(features=["item_covisit:covisit_items"],
                                        entity_rows=[{names.ITEM_KEY: i} for i in candidates]).to_dict()["covisit_items"]
    new_item = next(i for i, c in zip(candidates, covisit) if c and len(set(c) - set(before["recent_items"])) >= 3)
    event = {"event_id": f"fresh-{user}", "user_id": user, "item_id": new_item, "event_type": "click",
             "event_time": events[-1].event_time + 5_000}
    assert httpx.post(server.url + "/events", json=event, timeout=10).status_code == 202
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:
        after = _get(server, f"/recommendations/{user}", k=100).json()
        if after["recent_items"][:1] == [new_item]:
            break
        time.sleep(0.1)
    assert after["recent_items"][0] == new_item
    covisited = {i["item_id"] for i in after["items"] if "covisit" in i["sources"]}
    assert covisited != {i["item_id"] for i in before["items"] if "covisit" in i["sources"]}
    assert new_item not in {i["item_id"] for i in after["items"]}  # just consumed: filtered


def _write_quality_reports(settings) -> None:  # noqa: ANN001 - Settings
    """A replay report (as `recsys evaluate` writes it) where served leads, and a held-out day."""
    scores = Scores(10, ("served", "item_knn", "popularity"))
    for t in range(300):
        scores.add(DAY_MS * 100 + t * 60_000, {"served": 0 if t % 2 else None, "item_knn": 3 if t % 4 == 1 else None,
                                               "popularity": 9 if t % 10 == 1 else None})
    report = Report.build(scores, [("served", "item_knn"), ("served", "popularity")], 200, eval_start_ms=DAY_MS * 100,
                          events=300, history_events=1000, retrains=1)
    write_report(report, settings.paths.reports_dir)
    holdout.write_report(settings.paths.holdout_report, "1998-04-22", holdout.HoldoutResult(10, 40, 0.5, 0.1, 0.3, "v0001"),
                         holdout.PrequentialResult(10, 90, 0.25, 0.05, 0.2, 60))


def test_quality_reports_missing_unreadable_then_read(stack):
    server, _ = stack
    paths = server.ctx.settings.paths
    for path in (paths.replay_report, paths.holdout_report):
        path.unlink(missing_ok=True)
    q = _get(server, "/quality").json()
    assert "recsys evaluate" in q["replay"]["hint"] and "make demo" in q["holdout"]["hint"]
    paths.reports_dir.mkdir(parents=True, exist_ok=True)
    paths.replay_report.write_text("{not json")
    q = _get(server, "/quality").json()
    assert str(paths.replay_report) in q["replay"]["error"] and "hint" in q["holdout"]  # named, and the rest still shows
    _write_quality_reports(server.ctx.settings)
    q = _get(server, "/quality").json()
    assert [s["name"] for s in q["replay"]["strategies"]] == ["served", "item_knn", "popularity"]  # best first
    assert q["replay"]["strategies"][0]["hr"] == pytest.approx(0.5)
    gap = q["replay"]["served_vs"]["item_knn"]
    assert gap["low"] > 0 and gap["mean"] == pytest.approx(0.5 - 0.25 / math.log2(5))
    assert q["holdout"]["at_boundary"]["hr_item_knn"] == 0.3 and q["holdout"]["per_event"]["events"] == 90


def test_item_details_come_from_the_loaded_catalogue(stack, ml100k_path, capsys):
    """Titles and categories are an extra, asked for with details=true, read from the catalogue
    loaded into the feature store; the CLI's `recsys recommend` shows them."""
    import argparse

    from batch.catalogue import load_catalogue, read_catalogue
    from infra.cli.serve import cmd_recommend

    server, events = stack
    user = events[-1].user_id
    assert all("title" not in i for i in _get(server, f"/recommendations/{user}", k=5).json()["items"])
    catalogue = read_catalogue(ml100k_path.with_name("u.item"))
    assert load_catalogue(server.ctx.settings, catalogue) == 1682
    known = catalogue.frame().set_index("item_id")
    detailed = _get(server, f"/recommendations/{user}", k=5, details="true").json()["items"]
    assert [(i["title"], i["category"]) for i in detailed] == [tuple(known.loc[i["item_id"], ["title", "category"]]) for i in detailed]
    batch = httpx.post(server.url + "/recommendations", json={"user_ids": [user], "k": 2, "details": True}, timeout=10).json()
    assert all(i["title"] for i in batch["results"][0]["items"])
    import pandas as pd

    from features.point_in_time import historical  # the offline copy: what a point-in-time join sees, at any time

    offline = historical(server.ctx.settings, "item_id", pd.Series(["50"]), pd.Series([events[0].event_time]),
                         ["item_attributes:title"])
    assert offline["item_attributes__title"].tolist() == ["Star Wars (1977)"]
    assert cmd_recommend(server.ctx.settings, argparse.Namespace(user_id=user, k=3)) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert known.loc[detailed[0]["item_id"], "title"].split(" (")[0].split()[0] in shown


def test_dashboard_renders_in_headless_chromium(stack, tmp_path):
    from infra import chromium

    if chromium.binary() is None:
        pytest.skip("chromium is not installed (infra/setup.sh installs it)")
    server, _ = stack
    _write_quality_reports(server.ctx.settings)
    dom = chromium.dump_dom(server.url + "/ui")
    version = server.ctx.holder.current.version
    assert f'id="model-version">{version}<' in dom  # the script fetched /model and rendered it
    assert len(re.findall(r'<tr class="rec-row"><td>\d+</td>', dom)) == 10  # and /recommendations for the default user
    assert len(re.findall(r'<tr class="rec-row"><td>\d+</td><td>[^<]+</td><td>[^<]+</td>', dom)) == 10  # with titles
    assert "ev/s" in dom or "stream job" in dom
    assert re.search(r'<tr style="font-weight:600"><td>served</td><td>0\.5000</td>', dom)  # the quality panel, served first
    assert "item-kNN 0.300" in dom  # and the held-out day
    shot = chromium.screenshot(server.url + "/ui", tmp_path / "dashboard.png")
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_generated_input_makes_the_api_fail(stack):
    """Schemathesis generates requests from the OpenAPI schema (valid and invalid): never a 5xx."""
    server, _ = stack
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    calls = Counter()

    for operation in operations:
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # noqa: ANN001
            response = case.call(base_url=server.url, timeout=30)
            calls[response.status_code // 100] += 1
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"

        check()
    assert calls[2] and calls[4]  # both accepted and refused inputs were generated


def test_an_item_that_becomes_popular_is_recommended_after_the_next_online_delta(stack):
    """No nightly run: the streaming trainer's delta puts the new item in the served catalogue."""
    from batch.online import learn

    server, events = stack
    s = server.settings
    s = s.model_copy(update={"online": s.online.model_copy(update={"publish_every_events": 40})})
    raters = sorted({e.user_id for e in events})[:60]
    t0 = events[-1].event_time + 60_000
    fresh = [{"event_id": f"trend-{i}", "user_id": u, "item_id": "trend-item-1", "event_type": "rating", "value": 5.0,
              "event_time": t0 + 1000 * i} for i, u in enumerate(raters)]
    cold = "nobody-has-seen-this-user"
    assert "trend-item-1" not in {i["item_id"] for i in _get(server, f"/recommendations/{cold}", k=20).json()["items"]}
    with EventProducer(s) as producer:
        producer.send_many(fresh)
    time.sleep(3)  # the stream job has its features in Redis now, but the served catalogue lacks it
    assert "trend-item-1" not in {i["item_id"] for i in _get(server, f"/recommendations/{cold}", k=20).json()["items"]}
    report = learn.run(s, idle_exit_s=3.0)
    assert report.trained >= len(fresh) and report.published
    served = server.wait_for(report.published[-1].version)
    assert served["served"]["version"] == report.published[-1].version
    assert served["served"]["loaded_from"] == "delta"
    deadline = time.monotonic() + 20  # item features (its popularity) reach the snapshot within item_refresh_s
    items: dict = {}
    while time.monotonic() < deadline:
        items = {i["item_id"]: i for i in _get(server, f"/recommendations/{cold}", k=20).json()["items"]}
        if "trend-item-1" in items:
            break
        time.sleep(0.2)
    assert "trend-item-1" in items
    assert {"trending", "popular"} & set(items["trend-item-1"]["sources"])


def _wait_arms(server: Server, versions: set[str], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = _get(server, "/model").json()
        if set(m["arms_loaded"]) == versions:
            return m
        time.sleep(0.05)
    raise TimeoutError(f"the API did not load the arms {versions} within {timeout_s}s: {m['arms_loaded']}")


def test_an_experiment_serves_each_user_their_arm_and_logs_it(stack):
    server, events = stack
    registry = ModelRegistry(server.settings.paths.models_dir)
    control = registry.served()
    other = publish_nudged_version(registry, 7)  # published, not promoted
    store = ExperimentStore(server.settings.paths.experiments_dir)
    exp = store.start(Experiment(name="ab-test", arms=[ArmSettings(name="a", version=control, share=0.5),
                                                        ArmSettings(name="b", version=other, share=0.5)]))
    try:
        _wait_arms(server, {other})
        users = sorted({e.user_id for e in events})[:40] + ["someone-new-1", "someone-new-2"]
        served = [_get(server, f"/recommendations/{u}", k=5).json() for u in users]
        again = [_get(server, f"/recommendations/{u}", k=5).json() for u in users]
        salt = server.settings.experiments.salt
        for first, second, user in zip(served, again, users):
            arm = assign(exp, user, salt)
            assert (first["arm"], first["model_version"]) == (f"ab-test/{arm.name}", arm.version)  # the arm's own version
            assert (second["arm"], second["model_version"]) == (first["arm"], first["model_version"])  # sticky
        assert {r["arm"] for r in served} == {"ab-test/a", "ab-test/b"}
        logged = _impressions(server, len(served) * 2)
        assert all(logged[r["request_id"]]["arm"] == r["arm"] for r in served)
        body = _get(server, "/experiment").json()
        assert body["experiment"]["name"] == "ab-test" and [a["arm"] for a in body["arms"]] == ["a", "b"]
        assert "vs_control" in body["arms"][1]
        from infra import chromium

        if chromium.binary() is not None:  # the dashboard's experiment panel shows it with both arms
            dom = chromium.dump_dom(server.url + "/ui")
            assert "experiment <b>ab-test</b>" in dom and f"<td>b</td><td>{other}</td><td>50%</td>" in dom
    finally:
        store.end("stopped", "test over")
    _wait_arms(server, set())
    after = _get(server, f"/recommendations/{users[0]}", k=5).json()
    assert after["arm"] is None and after["model_version"] == control


def _fake_counts(server: Server, control: str, canary: str, control_hits: int, canary_hits: int, lists: int) -> None:
    """What the attribution job would have written for both arms (its per-shard totals in Redis)."""
    running = RunningTotals()
    c, k = f"rollout-{canary}/{CONTROL}", f"rollout-{canary}/{CANARY}"  # serving.experiments.arm_label
    running.apply([Increment(control, c, "lists", lists), Increment(control, c, "hits", control_hits),
                   Increment(canary, k, "lists", lists), Increment(canary, k, "hits", canary_hits)])
    AttributionCounts.for_settings(server.settings).write(0, running, now_ms=int(time.time() * 1000))


def test_the_guard_rolls_back_a_worse_canary_and_promotes_a_good_one(stack):
    from serving.rollout import start_rollout

    server, events = stack
    s = server.settings
    registry = ModelRegistry(s.paths.models_dir)
    control = registry.served()
    counts = AttributionCounts.for_settings(s)
    worse = publish_nudged_version(registry, 11)
    start_rollout(s, worse)
    _wait_arms(server, {worse})
    users = sorted({e.user_id for e in events})[:60]
    arms = {_get(server, f"/recommendations/{u}").json()["arm"] for u in users}
    assert arms == {f"rollout-{worse}/{CANARY}", f"rollout-{worse}/{CONTROL}"}
    _fake_counts(server, control, worse, control_hits=1000, canary_hits=600, lists=5000)
    server.ctx._guard_check()
    m = _get(server, "/model").json()
    assert m["experiment"]["outcome"] == "rolled_back" and m["guard"]["action"] == "rollback"
    assert "canary hit rate 0.1200 vs control 0.2000" in m["experiment"]["reason"]
    assert m["registry_current"] == control and m["served"]["version"] == control
    counts.clear()

    better = publish_nudged_version(registry, 12)
    start_rollout(s, better)
    _wait_arms(server, {better})
    _fake_counts(server, control, better, control_hits=1000, canary_hits=1010, lists=s.experiments.rollout.budget_lists)
    server.ctx._guard_check()
    m = server.wait_for(better)
    assert m["experiment"]["outcome"] == "promoted" and m["registry_current"] == better
    assert m["served"]["version"] == better and m["arms_loaded"] == []
    assert [e["outcome"] for e in m["swaps"] if e["version"] == better][-1] == "memory"  # the canary was loaded already
    assert 'recsys_rollout_decisions_total{action="rollback"} 1.0' in _get(server, "/metrics").text
    counts.clear()
    registry.promote(control)
    server.wait_for(control)
