"""Prometheus metrics of the API, in a registry per app (several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.impressions import OUTCOMES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ApiMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("recsys_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("recsys_http_request_seconds", "request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("recsys_recommend_stage_seconds", "time per recommendation stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.candidates = Histogram("recsys_candidates", "candidates proposed per request by source", ["source"],
                                    buckets=(0, 1, 5, 10, 25, 50, 100, 200, 400), registry=r)
        self.cold_start = Counter("recsys_cold_start", "recommendations for users without history", registry=r)
        self.swaps = Counter("recsys_model_swaps", "model swaps by outcome (full, delta, memory, rejected)",
                             ["outcome"], registry=r)
        self.swap_seconds = Histogram("recsys_model_swap_seconds", "time to load, check and swap a model",
                                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.model_info = Gauge("recsys_model_info", "1 for the served model version", ["version"], registry=r)
        self.events = Counter("recsys_events_posted", "events received on POST /events by outcome",
                              ["outcome"], registry=r)
        self.impressions = Counter("recsys_impressions", f"served lists for the impression log by outcome "
                                   f"({', '.join(OUTCOMES)})", ["outcome"], registry=r)
        self.attributed = Gauge("recsys_attributed", "live attribution's counts per model version and arm "
                                "(lists, hits, shown, engaged; read from Redis at each scrape)", ["version", "arm", "what"], registry=r)
        self.rollout_decisions = Counter("recsys_rollout_decisions", "the rollout guard's decisions (promote, rollback)",
                                         ["action"], registry=r)
        self.snapshot_age = Gauge("recsys_item_snapshot_age_seconds", "age of the item feature snapshot", registry=r)
