"""One settings object for the whole engine.

Every address, port, path and topic name lives here. Values come from (highest first):
explicit arguments, environment variables (``RECSYS_`` prefix, ``__`` for nesting, e.g.
``RECSYS_BROKER__PORT=19093``), the YAML file named by ``RECSYS_CONFIG`` (default
``recsys.yaml`` in the working directory, optional), then the defaults below.

>>> s = Settings(data_dir="/tmp/x")
>>> s.broker.bootstrap
'127.0.0.1:19092'
>>> str(s.paths.run_dir)
'/tmp/x/run'
"""

from __future__ import annotations

import json
import os
import typing
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Iterator, Literal, Mapping

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from models.config import ModelSettings, RankerSettings  # the model library's own config, composed here

CONFIG_ENV_VAR = "RECSYS_CONFIG"
DEFAULT_CONFIG_FILE = "recsys.yaml"


class BrokerSettings(BaseModel):
    """Kafka protocol endpoint. ``managed`` starts the local Tansu broker; set it false and
    point ``bootstrap_servers`` at a Kafka cluster in production."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = 19092
    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; defaults to host:port of the local broker"
    )
    client_id: str = "recsys"
    security_protocol: str = Field(default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$")
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, description="set it with RECSYS_BROKER__SASL_PASSWORD; never written to disk")
    ssl_cafile: Path | None = Field(default=None, description="PEM file of the CA that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    ssl_keyfile: Path | None = Field(default=None, description="client private key (PEM) for mutual TLS")
    ssl_check_hostname: bool = True

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class TopicSettings(BaseModel):
    """Topic names and partition counts; ``recsys up`` creates them explicitly."""

    events: str = "events"
    events_partitions: int = Field(default=4, ge=1)
    dlq: str = "events.dlq"
    dlq_partitions: int = Field(default=1, ge=1)
    impressions: str = Field(default="impressions", description="every list the API serves (serving.impressions)")
    impressions_partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)


class RedisSettings(BaseModel):
    """Redis for the Feast online store. ``managed`` starts a local redis-server with AOF."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = 16379
    appendonly: bool = True
    password: SecretStr | None = Field(default=None, description="set it with RECSYS_REDIS__PASSWORD; never written to disk")

    @property
    def secret(self) -> str | None:
        """The password in clear, for a client's constructor only."""
        return self.password.get_secret_value() if self.password else None


class ProducerSettings(BaseModel):
    """Producer batching, retries and bounds (see streaming.producer)."""

    acks: str | int = "all"
    linger_ms: int = 5
    batch_size: int = 256 * 1024
    max_buffered_events: int = Field(default=100_000, ge=1, description="unacknowledged events held before send() blocks")
    max_block_ms: int = 10_000
    retries: int = 5
    request_timeout_ms: int = 15_000
    max_event_bytes: int = Field(default=16 * 1024, description="larger payloads go to the DLQ")
    compression_type: str | None = None


class ConsumerSettings(BaseModel):
    """Consumer defaults for validating consumers (see streaming.consumer)."""

    group_id: str = "recsys"
    auto_offset_reset: str = "earliest"
    max_poll_records: int = 5000
    session_timeout_ms: int = 10_000


class WindowSpec(BaseModel):
    """A sliding event-time window for item popularity: ``size_s`` long, advancing by ``slide_s``."""

    name: str = Field(pattern=r"^[a-z0-9]+$", description="used in feature names, e.g. 1h -> pop_1h_click")
    size_s: int = Field(gt=0)
    slide_s: int = Field(gt=0)

    @model_validator(mode="after")
    def _slide_divides_size(self) -> "WindowSpec":
        if self.size_s % self.slide_s:
            raise ValueError(f"window {self.name}: slide_s must divide size_s")
        return self


class FeatureSettings(BaseModel):
    """The Feast repository (features/) and the parameters of the streaming features."""

    project: str = "recsys"
    registry: str | None = Field(
        default=None,
        description="registry file path (default <data_dir>/feast/registry.db) or a SQL URL "
        "(postgresql://..., mysql://..., sqlite:///...) for a shared SQL registry",
    )
    windows: list[WindowSpec] = [
        WindowSpec(name="1h", size_s=3600, slide_s=300),
        WindowSpec(name="24h", size_s=86400, slide_s=3600),
    ]
    recent_items: int = Field(default=20, ge=1, description="last N events kept per user")
    covisit_window_s: int = Field(default=3600, gt=0, description="two items co-visit if one user saw both within this")
    covisit_max_recent: int = Field(default=5, ge=1, description="a new event pairs with at most this many previous ones")
    covisit_top_k: int = Field(default=50, ge=1, description="co-visited items kept per item online")
    ttl_days: float | None = Field(default=None, description="feature TTL for historical joins; None = no limit")

    @model_validator(mode="after")
    def _windows_unique(self) -> "FeatureSettings":
        names = [w.name for w in self.windows]
        if not names or len(set(names)) != len(names):
            raise ValueError("features.windows needs at least one window and unique names")
        return self


class StreamSettings(BaseModel):
    """The PyFlink feature job (streaming.job.feature_job)."""

    job_name: str = "recsys-features"
    group_id: str = "recsys-stream"
    parallelism: int = Field(default=1, ge=1)
    checkpoint_interval_ms: int = Field(
        default=10_000, ge=100, description="how often state + offsets are checkpointed: a crash replays up to this much "
        "(exactly once either way); each checkpoint snapshots all feature state, which showed in freshness p99 at 2 s"
    )
    checkpoints_retained: int = Field(default=3, ge=1)
    batch_ms: int = Field(default=50, ge=10, description="records reach Python in micro-batches of this much processing time")
    local_state_entries: int = Field(
        default=1_000_000, ge=1000, description="user/item states each function keeps deserialised in front of Flink state"
    )
    item_shards: int = Field(default=8, ge=1, description="item state is keyed by crc32(item) % this")
    out_of_orderness_ms: int = Field(default=5000, ge=0, description="a partition's watermark = its max event time - this")
    allowed_lateness_ms: int = Field(
        default=3_600_000, ge=0, description="events older than watermark - this are late: kept in the lake, not in features"
    )
    online_flush_ms: int = Field(
        default=0, ge=0, description="max time a feature update waits before it is written; 0 = after every micro-batch "
        "(lowest latency; >0 coalesces writes of hot entities across micro-batches)"
    )
    catch_up_flush_ms: int = Field(
        default=2000, ge=0, description="while the job is behind (records over 1 s old when written) and records keep "
        "coming, features are written at most this often, so a hot entity is written once per interval: catching up "
        "is faster; 0 = off"
    )
    online_flush_rows: int = Field(default=50_000, ge=1, description="staged rows that force a write before the wait is over")
    writer_process: bool = Field(
        default=True, description="while the job is behind, compute and write feature values in a child process of "
        "each job subtask (another core; the job hands it encoded states); while it keeps up, and with this off, "
        "the job's Python worker writes them itself (streaming.job.feature_writer)"
    )
    lake_flush_ms: int = Field(default=2000, ge=1)
    lake_flush_rows: int = Field(default=50_000, ge=1)
    fetch_max_wait_ms: int = Field(default=50, ge=0, description="Kafka fetch wait when there is no data (latency at low rates)")
    buffer_timeout_ms: int = Field(default=5, ge=0, description="Flink network buffer flush interval (latency vs throughput)")
    gc_freeze_every_ms: int = Field(
        default=1000, ge=0, description="move long-lived objects (the feature states) out of Python's cyclic GC this often, "
        "so full collections do not stall the job (0 = leave the GC alone)"
    )
    bundle_time_ms: int = Field(default=10, ge=1, description="python.fn-execution.bundle.time: Python state commits and timers at least this often (5: p50 -20 ms, throughput -7%)")
    bundle_size: int = Field(default=5000, ge=1, description="python.fn-execution.bundle.size")
    topic_epoch: str | None = Field(
        default=None,
        description="identifies this incarnation of the events topic in the lake's idempotency ids; "
        "None = the managed broker's start (its memory storage begins empty) or 'kafka' for an external cluster. "
        "Change it if you delete and recreate the topic.",
    )
    jobmanager: str | None = Field(
        default=None, description="host:port of a Flink session cluster's REST endpoint; None = local mini-cluster"
    )
    flink_config: dict[str, str] = Field(default_factory=dict, description="extra Flink configuration, passed through")


class EventTypeSettings(BaseModel):
    """What one event type means: overrides of its default in ``streaming.vocabulary``."""

    label: Literal["positive", "negative", "unlabelled", "rating"] | None = Field(
        default=None, description="positive / negative: always that label; unlabelled: features only (like a view); "
        "rating: positive when value >= training.rating_threshold, else negative. None = the type's default")
    weight: float | None = Field(default=None, gt=0, description="how much a labelled event of this type counts in "
                                 "training (its rows' and lists' loss weight); None = 1")


class EventSettings(BaseModel):
    """The event vocabulary: the names a log may use and what each type means (``streaming.vocabulary``
    owns the engine's types and their defaults; validation, labels, features and the DLQ read it)."""

    aliases: dict[str, str] = Field(default_factory=dict, description="your event names -> the engine's types, "
                                    "e.g. {pv: view, buy: purchase, cart: add_to_cart, fav: like}")
    types: dict[str, EventTypeSettings] = Field(default_factory=dict, description="per engine type: its label "
                                                "and weight, e.g. {purchase: {weight: 3}, view: {label: unlabelled}}")
    replay_memory_events: int = Field(default=1_000_000, ge=1, description="events `recsys replay` holds to put a "
                                      "file in time order; a larger unsorted file is sorted in runs on disk "
                                      "(<data_dir>/spill) and merged (~1.3 KB of memory per event held)")


class TrainingSettings(BaseModel):
    """How training examples are made from the events table (batch.nightly.training_data)."""

    rating_threshold: float = Field(default=4.0, description="rating >= this is a positive, below is a negative")
    positive_types: list[str] | None = Field(default=None, description="deprecated (use events.types.<type>.label): "
                                             "when set, exactly these types are positives, other unrated types unlabelled")
    objective: str = Field(default="pointwise", pattern="^(listwise|pointwise)$", description="pointwise: binary cross-entropy per row; listwise: softmax over each positive with its hard and random negatives (batch.nightly.training_lists; not yet better on ml-100k: docs/quality.md)")
    hard_negatives: int = Field(default=15, ge=0, description="listwise: negatives drawn from the user's item-kNN list (what the candidate sources propose), per positive")
    hard_pool: int = Field(default=200, ge=1, description="listwise: hard negatives are drawn from the user's best N item-kNN items (then the popular ones), weighted to the top and corrected for it (batch.nightly.training_lists)")
    hard_sampling: str = Field(default="zipf", pattern="^(zipf|full)$", description="zipf: hard_negatives drawn from the pool ~ 1/(rank + 10) with a log-q correction; full: the pool's first hard_negatives items, all of them (what the API ranks)")
    popular_pool: int = Field(default=50, ge=0, description="listwise: the most-labelled items join the pool of hard negatives (the API proposes them too)")
    negatives_per_positive: int = Field(default=4, ge=0, description="uniform negatives per positive (listwise: added to the hard ones; fill in when the neighbourhood has too few)")
    impression_negatives: int = Field(default=0, ge=0, description="per positive, up to N more negatives: items shown to the user and not engaged (the attribution job's impressions table), from lists whose attribution window closed before the positive, newest first; with negatives_per_positive it sets the mix; 0 = sampled negatives only")
    negative_popularity_power: float = Field(default=0.0, ge=0, description="negatives ~ item count ** this (0 = uniform, the default: popularity-weighted negatives teach the model to rank popular items down and lost to plain popularity on top-K)")
    validation: str = Field(default="last_days", pattern="^(last_days|last_per_user)$")
    validation_days: float = Field(default=7.0, gt=0, description="last_days: events in the final N days validate")
    validation_per_user: int = Field(default=1, ge=1, description="last_per_user: each user's last N interactions validate")
    seed: int = 0
    pit_engine: str = Field(default="asof", pattern="^(asof|feast)$", description="point-in-time join: DuckDB ASOF over the registry's sources, or Feast's get_historical_features (same rows, ~40x slower)")
    snapshot_every_s: float = Field(default=0.0, ge=0, description="feature history for point-in-time joins: at most one row per entity per N s of event time (0 = after every event)")
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    eval_k: int = Field(default=10, ge=1, description="top-K metrics (HR@K, NDCG@K) with full-catalogue ranking")
    promote_metric: str = Field(default="ndcg_at_k", pattern="^(auc|logloss|hr_at_k|ndcg_at_k)$")
    promote_tolerance: float = Field(default=0.01, ge=0, description="promote unless the new model is worse than the served one by more than this (absolute)")
    promote_z: float = Field(default=2.0, ge=0, description="top-K metrics: also allow z standard errors of the per-user difference (noise of small validation sets); 0 = tolerance only")
    delta_threshold: float = Field(default=0.0, ge=0, description="an embedding row goes into a delta when any value moved by more than this")
    nproc: int = Field(default=1, ge=1, description="training processes (torchrun + gloo DistributedModelParallel when > 1)")


class ScheduleSettings(BaseModel):
    """When `recsys schedule` runs the nightly retrain (local default; infra/production has cron/K8s/Airflow forms)."""

    daily_at: str = Field(default="03:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, local time of `timezone`")
    timezone: str = "UTC"
    run_on_start: bool = Field(default=False, description="also run once immediately when the scheduler starts")


class ServingSettings(BaseModel):
    """The recommendation API (serving/): address, candidate sources, hot swap, admin token."""

    host: str = "127.0.0.1"
    port: int = 18080
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token for /admin/* (swap, rollback); None disables them"
    )
    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=100, ge=1)
    max_batch_users: int = Field(default=100, ge=1, description="users per POST /recommendations")
    impressions: bool = Field(default=True, description="log every served list to topics.impressions (off the request path: serving.impressions)")
    impression_buffer: int = Field(default=10_000, ge=1, description="impressions held while the broker is slow or down; beyond it new ones are dropped and counted (recsys_impressions_total)")
    impression_batch: int = Field(default=500, ge=1, description="impressions sent to the broker at a time")
    impression_retry_s: float = Field(default=2.0, gt=0, description="wait before trying an unreachable broker again")
    trending_candidates: int = Field(default=0, ge=0, description="the catalogue's most active items as candidates (0 by default: the ranker is trained on the similar + popular pool, and extra sources cost NDCG on the validation window: docs/quality.md)")
    trending_slots: int = Field(default=0, ge=0, description="the N most active trending candidates always make the list (last places when the ranking left them out); 0 = ranking only (the default: measured, docs/quality.md)")
    similar_candidates: int = Field(default=200, ge=0, description="the user's item-kNN list over the version's similarity table (models.similarity)")
    covisit_candidates: int = Field(default=0, ge=0, description="the stream job's co-visitation lists (0 by default, as trending)")
    covisit_from_recent: int = Field(default=5, ge=1, description="co-visitation lists read for the user's newest N items")
    embedding_candidates: int = Field(default=0, ge=0, description="the TorchRec item table's nearest neighbours (0 by default, as trending)")
    popular_candidates: int = Field(default=50, ge=0, description="the model's most trained-on items (more when the list is still short)")
    filter_seen: bool = Field(default=True, description="drop the items in the user's recent history")
    item_refresh_s: float = Field(
        default=2.0, gt=0, description="item features + trending are re-read for the catalogue this often (user features: every request)"
    )
    watch_interval_s: float = Field(default=0.5, gt=0, description="how often the registry's serving pointer is checked")
    max_delta_chain: int = Field(default=20, ge=1, description="longer gaps load the full version")
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")


class AttributionSettings(BaseModel):
    """Which later events engage a shown item (batch.attribution; the live attribution job, streaming.job.attribution_job)."""

    window_s: float = Field(default=1800.0, gt=0, description="an event engages an item shown at most this long before it (event time)")
    event_types: list[str] | None = Field(default=None, description="the engine types that engage; None = every type not labelled negative (events.types)")
    group_id: str = Field(default="recsys-attribution", description="the attribution job's consumer group")
    job_name: str = "recsys-attribution"
    batch_ms: int = Field(default=200, ge=10, description="records of each topic partition are grouped this long before they are attributed")
    lake_commit_every_s: float = Field(default=10.0, gt=0, description="attributed impressions are committed to the lake at most this often")


class ArmSettings(BaseModel):
    """One arm of an experiment: a model version and its share of users."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(pattern=r"^v\d{1,8}$", description="the registry version this arm serves (a recipe is a version trained with it)")
    share: float = Field(gt=0, le=1, description="its share of users; an experiment's shares add up to 1")


class RolloutSettings(BaseModel):
    """The guarded rollout (serving.rollout_guard): a new version serves a canary share until its live hit rate decides."""

    guard_new_versions: bool = Field(default=False, description="nightly and online versions start a guarded rollout instead of serving everyone at once")
    canary_share: float = Field(default=0.1, gt=0, lt=1, description="users the new version serves while the guard watches")
    min_lists: int = Field(default=300, ge=1, description="attributed lists per arm before the guard decides anything")
    budget_lists: int = Field(default=6000, ge=1, description="canary lists after which the guard promotes when no harm was shown")
    max_drop: float = Field(default=0.0, ge=0, lt=1, description="tolerated relative drop of the canary's hit rate below the control's")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="bound on wrongly rolling back a canary that is no worse (an always-valid test: serving.arm_comparison)")
    tau_relative: float = Field(default=0.2, gt=0, description="the test's prior scale: the hit-rate gap it is most sensitive to, relative to the control's rate")
    check_every_s: float = Field(default=5.0, gt=0, description="how often the API's guard reads the counts")


class ExperimentSettings(BaseModel):
    """Experiments (serving.experiments): arms with traffic shares, users assigned by a consistent hash."""

    salt: str = Field(default="recsys", min_length=1, description="mixed into the hash: change it to reshuffle every assignment")
    name: str | None = Field(default=None, description="the experiment `recsys experiment start` starts when given no --arm")
    arms: list[ArmSettings] = Field(default_factory=list, description="its arms, e.g. [{name: control, version: v0003, share: 0.5}, {name: b, version: v0004, share: 0.5}]")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="of the intervals `recsys experiment status` prints")
    rollout: RolloutSettings = RolloutSettings()


class OnlineSettings(BaseModel):
    """The streaming trainer (`recsys learn`, batch.online.online_learner): minute-level deltas."""

    group_id: str = Field(default="recsys-learner", description="its own consumer group (offsets live with the model, not in Kafka)")
    publish_every_s: float = Field(default=60.0, gt=0, description="publish a delta at most this often ...")
    publish_every_events: int = Field(default=5000, ge=1, description="... or after this many events, whichever comes first")
    batch_size: int = Field(default=256, ge=1, description="examples per incremental training step")
    sparse_lr: float = Field(default=0.02, gt=0, description="row-wise Adagrad rate for online steps (fresh optimizer state: lower than nightly)")
    train_dense: bool = Field(default=False, description="also move the dense weights (off: deltas carry only touched embedding rows)")
    promote: bool = Field(default=True, description="serve each published version (the API hot-swaps the delta)")
    keep_versions: int = Field(default=20, ge=2, description="online versions kept on disk; older ones are pruned (nightly versions are never pruned)")
    poll_timeout_ms: int = Field(default=500, ge=1)


class ItemKNNSettings(BaseModel):
    """The item-kNN yardstick (models.baselines.item_knn); chosen on the validation window (docs/quality.md)."""

    recent: int = Field(default=20, ge=1, description="a user's newest N distinct items vote for candidates")
    decay: float = Field(default=0.8, gt=0, le=1, description="the p-th newest item's vote is weighted decay**p")
    pair_with: int | None = Field(default=20, ge=1, description="a new item co-occurs with the user's previous N distinct items (None: all)")
    alpha: float = Field(default=0.5, ge=0, le=1, description="sim = C(i,j) / (n_i**alpha * n_j**(1-alpha)); 0.5 = cosine")


class EASESettings(BaseModel):
    """The EASE yardstick (models.baselines.ease), refit at each retrain boundary."""

    l2: float = Field(default=200.0, gt=0, description="ridge penalty lambda")
    max_items: int = Field(default=20_000, ge=1, description="the closed form covers the N most interacted-with items (cubic cost)")


class SASRecSettings(BaseModel):
    """The sequential yardstick (models.baselines.sasrec): causal self-attention, softmax over many negatives."""

    dim: int = Field(default=64, ge=1)
    max_len: int = Field(default=50, ge=2)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=128, ge=1)
    epochs: int = Field(default=20, ge=1, description="the first fit, from scratch")
    refit_epochs: int = Field(default=2, ge=1, description="later fits continue from the current weights")
    full_softmax_items: int = Field(default=50_000, ge=1, description="above this many items: sampled softmax")
    negatives: int = Field(default=1024, ge=1, description="uniform negatives per batch for the sampled softmax")
    seed: int = 0


class EvaluationSettings(BaseModel):
    """`recsys evaluate` (batch.evaluate.prequential): which yardsticks run beside the engine, and their settings."""

    baselines: list[str] = Field(default=["item_knn", "ease", "sasrec"],
                                 description="scored on the same events in the same run (item_knn, ease, sasrec)")
    bootstrap_resamples: int = Field(default=2000, ge=100, description="paired bootstrap for the 95% intervals")
    item_knn: ItemKNNSettings = ItemKNNSettings()
    ease: EASESettings = EASESettings()
    sasrec: SASRecSettings = SASRecSettings()

    @model_validator(mode="after")
    def _known_baselines(self) -> "EvaluationSettings":
        unknown = [b for b in self.baselines if b not in ("item_knn", "ease", "sasrec")]
        if unknown:
            raise ValueError(f"evaluation.baselines: unknown {unknown}; choose from item_knn, ease, sasrec")
        return self


class Paths(BaseModel):
    """Locations under the one data directory; nothing is written to $HOME."""

    root: Path
    REPLAY_REPORT: ClassVar[str] = "prequential.json"  # `recsys evaluate`'s report (a .png of the same name beside it)
    HOLDOUT_REPORT: ClassVar[str] = "holdout.json"  # the demo's held-out day

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def lake_dir(self) -> Path:
        return self.root / "lake"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def events_table(self) -> Path:
        return self.lake_dir / "events"

    @property
    def impressions_table(self) -> Path:
        """Every shown item of every served list, landed by the attribution job (streaming.lake.ImpressionRow)."""
        return self.lake_dir / "impressions"

    @property
    def attribution_checkpoint_dir(self) -> Path:
        return self.root / "flink" / "attribution-checkpoints"

    @property
    def feast_dir(self) -> Path:
        return self.root / "feast"

    @property
    def spill_dir(self) -> Path:
        """Temporary sorted runs of a replay larger than its memory bound (removed when it ends)."""
        return self.root / "spill"

    @property
    def experiments_dir(self) -> Path:
        """The running experiment or rollout and the history of ended ones (serving.experiments)."""
        return self.root / "experiments"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "flink" / "checkpoints"

    @property
    def reports_dir(self) -> Path:
        """Quality reports the dashboard shows: `recsys evaluate`'s replay and the demo's held-out day."""
        return self.root / "reports"

    @property
    def replay_report(self) -> Path:
        return self.reports_dir / self.REPLAY_REPORT

    @property
    def holdout_report(self) -> Path:
        return self.reports_dir / self.HOLDOUT_REPORT


class Settings(BaseSettings):
    """The engine's configuration (file + env vars)."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Path(".recsys")
    ml100k_path: Path = Path("../shared/data/ml-100k/u.data")
    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    events: EventSettings = EventSettings()
    redis: RedisSettings = RedisSettings()
    producer: ProducerSettings = ProducerSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    features: FeatureSettings = FeatureSettings()
    stream: StreamSettings = StreamSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    ranker: RankerSettings = RankerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    serving: ServingSettings = ServingSettings()
    online: OnlineSettings = OnlineSettings()
    experiments: ExperimentSettings = ExperimentSettings()
    attribution: AttributionSettings = AttributionSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    service_start_timeout_s: float = 30.0

    @cached_property
    def paths(self) -> Paths:
        return Paths(root=self.data_dir.absolute())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get(CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE))
        if CONFIG_ENV_VAR in os.environ and not config_file.is_file():
            raise FileNotFoundError(
                f"{CONFIG_ENV_VAR}={config_file} does not exist: create it or unset {CONFIG_ENV_VAR}"
            )
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config_file)
        return (init_settings, env_settings, yaml_source)


def _secret_fields(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of every SecretStr field, nested sections included."""
    for name, info in model.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        if SecretStr in kinds:
            yield (*path, name)
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _secret_fields(kind, (*path, name))


def secret_env_name(path: tuple[str, ...]) -> str:
    """The environment variable these settings read a field from, e.g. RECSYS_REDIS__PASSWORD."""
    return Settings.model_config["env_prefix"] + "__".join(path).upper()


def secret_env(settings: Settings) -> dict[str, str]:
    """The secrets that are set, under their environment variable names: how a child process
    gets them without their being written to a file."""
    out = {}
    for path in _secret_fields(Settings):
        value: object = settings
        for name in path:
            value = getattr(value, name, None)
        if isinstance(value, SecretStr):
            out[secret_env_name(path)] = value.get_secret_value()
    return out


def settings_snapshot(settings: Settings) -> str:
    """These settings as JSON with every secret masked (safe to write to disk)."""
    return settings.model_dump_json()


def settings_from_snapshot(text: str, environ: Mapping[str, str]) -> Settings:
    """The settings a snapshot holds, with their secrets taken back from ``environ``.

    >>> s = Settings(redis={"password": "pw"}, data_dir="/tmp/x")
    >>> "pw" in settings_snapshot(s)
    False
    >>> settings_from_snapshot(settings_snapshot(s), secret_env(s)).redis.secret
    'pw'
    """
    data = json.loads(text)
    for path in _secret_fields(Settings):
        section = data
        for name in path[:-1]:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and path[-1] in section:
            section[path[-1]] = environ.get(secret_env_name(path))
    return Settings.model_validate(data)


def load_settings(**overrides: object) -> Settings:
    """Settings from file + env, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
