"""The nightly retrain: pinned Delta version -> point-in-time examples -> TorchRec model ->
evaluation against popularity and the served model -> registry version + delta -> promotion.

Every input is pinned and recorded (events table version, feature registry digest, code
version, seeds), so re-running with the same version and seed gives the same metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import load_file

from batch import backfill
from batch.feature_history import FeatureHistory
from batch.nightly import training_data
from features.model_inputs import FeatureSpec, FeatureSpecMismatch, as_of, check_compatible, feature_spec, point_in_time
from infra.settings import Settings, TrainingSettings
from models.config import ModelSettings
from streaming.events import DAY_MS
from batch.nightly.training_lists import CROSS_COLUMNS, list_size, ranker_list_settings
from models.cross_features import N_CROSS, cross_features, ranker_extras
from models.evaluate import auc, logloss, paired_worse, top_k
from models.categories import CATEGORIES_FILE, CATEGORY_NAME, ItemCategories
from models.list_ranker import RANKER_FILE, ListRanker, fit_ranker, for_ranker, ranker_inputs
from models.similarity import SIMILARITY_FILE, SimilarityTable
from models.ranking import Batch, build_model, dense_optimizer, predict
from models.id_table import IDS_FILE, ModelIds, model_ids, training_ids
from models.registry import ModelIntegrityError, ModelRegistry, code_version
from models.train import Examples, TrainLog, fit
from serving.rollout import serve_new_version

LOWER_IS_BETTER = {"logloss"}


@dataclass
class Evaluation:
    """Held-out rows (AUC, log loss) and full-catalogue top-K inputs, built once per run."""

    validation: Examples
    users: list[str]
    catalogue: np.ndarray
    user_dense: np.ndarray
    user_recent: list[list[str]]
    item_dense: np.ndarray
    relevant: dict[str, set[str]]
    seen: dict[str, set[str]]
    popularity: np.ndarray  # training-period positives per catalogue item
    cutoff_ms: int
    similarity: SimilarityTable | None = None  # as of the cutoff: the cross features without look-ahead
    validation_cross: np.ndarray | None = None  # the validation rows' cross features
    categories: ItemCategories | None = None  # the catalogue's (a ranker with category_affinity reads them)

    def metrics(self, model: torch.nn.Module, cfg: "ModelSettings | ModelIds", k: int, batch_size: int,
                cross: bool = False) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Aggregate metrics, and per-user top-K values (for the paired promotion test); ``cross``:
        the model takes the cross features."""
        rows = self.validation
        if cross and len(rows):
            rows = replace(rows, dense=np.hstack([rows.dense, self._validation_cross()]))
        probs = np.concatenate([predict(model, b).numpy() for b in rows.batches(cfg, batch_size)]) \
            if len(rows) else np.array([])
        labels = rows.labels if rows.labels is not None else np.array([])
        ranked = top_k(lambda u, c: self._score(model, cfg, u, c, cross), self.users, self.catalogue, self.relevant,
                       self.seen, k)
        return ({"auc": auc(labels, probs), "logloss": logloss(labels, probs) if len(labels) else float("nan"),
                 "hr_at_k": ranked.hr, "ndcg_at_k": ranked.ndcg, "users": ranked.users, "validation_rows": len(labels)},
                ranked.per_user or {})

    def ranker_metrics(self, ranker: ListRanker, k: int) -> dict[str, float]:
        """The candidate ranker over the whole catalogue (its features as of the cutoff)."""
        def score(u: int, candidates: np.ndarray) -> np.ndarray:
            table, items = self.similarity or SimilarityTable.empty(), self.catalogue[candidates].tolist()
            x = ranker_inputs(self.user_dense[u:u + 1], self.item_dense[candidates],
                              cross=cross_features(table, self.user_recent[u], items))
            return ranker.score(for_ranker(ranker, x, ranker_extras(table, self.categories, self.user_recent[u], items,
                                                                    self.cutoff_ms)))

        ranked = top_k(score, self.users, self.catalogue, self.relevant, self.seen, k)
        return {"hr_at_k": ranked.hr, "ndcg_at_k": ranked.ndcg, "users": ranked.users}

    def popularity_metrics(self, k: int) -> dict[str, float]:
        ranked = top_k(lambda u, c: self.popularity[c], self.users, self.catalogue, self.relevant, self.seen, k)
        return {"hr_at_k": ranked.hr, "ndcg_at_k": ranked.ndcg, "users": ranked.users}

    def _validation_cross(self) -> np.ndarray:
        if self.validation_cross is None:
            table = self.similarity or SimilarityTable.empty()
            v = self.validation
            self.validation_cross = np.concatenate(
                [cross_features(table, v.recent[i], [v.items[i]]) for i in range(len(v))]) if len(v) else \
                np.zeros((0, N_CROSS), dtype=np.float32)
        return self.validation_cross

    def _score(self, model: torch.nn.Module, cfg: "ModelSettings | ModelIds", u: int, candidates: np.ndarray,
               cross: bool = False) -> np.ndarray:
        n = len(candidates)
        dense = np.hstack([np.repeat(self.user_dense[u:u + 1], n, axis=0), self.item_dense[candidates]])
        if cross:
            dense = np.hstack([dense, cross_features(self.similarity or SimilarityTable.empty(), self.user_recent[u],
                                                     self.catalogue[candidates].tolist())])
        batch = Batch.build(cfg, [self.users[u]] * n, self.catalogue[candidates].tolist(), [self.user_recent[u]] * n,
                            torch.from_numpy(dense))
        return predict(model, batch).numpy()


@dataclass
class RetrainResult:
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    popularity: dict[str, float]
    served_version: str | None
    served_metrics: dict[str, float] | None
    table_version: int
    report_dir: Path
    delta_rows: dict[str, int] = field(default_factory=dict)


def _examples(settings: Settings, spec: FeatureSpec, frame: pd.DataFrame, group: int = 1) -> Examples:
    """Point-in-time rows; a lists frame (``batch.nightly.training_lists``) also brings its cross features."""
    dense, recent = point_in_time(settings, spec, frame["user_id"], frame["item_id"], frame["event_time"])
    if group > 1 and settings.model.cross_features:
        dense = np.hstack([dense, frame[CROSS_COLUMNS].to_numpy(dtype=np.float32)])
    return Examples(frame["user_id"].to_numpy(dtype=object), frame["item_id"].to_numpy(dtype=object), recent, dense,
                    frame["label"].to_numpy(dtype=np.float32), group,
                    frame["offset"].to_numpy(dtype=np.float32) if "offset" in frame else None, _weights(frame))


def _weights(frame: pd.DataFrame) -> np.ndarray | None:
    """The rows' loss weights (event types' weights, ``streaming.vocabulary``); None when all are 1."""
    if "weight" not in frame or (frame["weight"] == 1.0).all():
        return None
    return frame["weight"].to_numpy(dtype=np.float32)


def _training_examples(settings: Settings, spec: FeatureSpec, data: training_data.TrainingData) -> Examples:
    """What the model trains on: the lists (listwise), or the labelled rows with sampled negatives."""
    if settings.training.objective != "listwise":
        if settings.model.cross_features:
            raise ValueError("model.cross_features needs training.objective=listwise (the lists carry the cross "
                             "features); set one or the other")
        return _examples(settings, spec, data.train)
    return _examples(settings, spec, data.lists.frame, list_size(settings.training))


RANKER_JOIN_ROWS = 400_000  # rows per point-in-time join of the ranker's lists: the join's memory stays bounded
# (one join of 20,000 lists x 251 rows peaked at 6.9 GB on a 100k-event log; bench/scale.py)


def list_features(settings: Settings, spec: FeatureSpec, frame: pd.DataFrame, group: int) -> np.ndarray:
    """The lists' point-in-time entity features, joined ``RANKER_JOIN_ROWS`` rows (whole lists) at a time."""
    step = max(group, RANKER_JOIN_ROWS // group * group)
    return np.concatenate([point_in_time(settings, spec, part["user_id"], part["item_id"], part["event_time"])[0]
                           for part in (frame.iloc[i:i + step] for i in range(0, len(frame), step))])


def train_ranker(settings: Settings, spec: FeatureSpec, data: training_data.TrainingData) -> ListRanker | None:
    """The candidate ranker (``models.list_ranker``) on the training lists of the last
    ``ranker.train_days`` before the validation cutoff: point-in-time entity features + the lists'
    cross features."""
    rcfg = settings.ranker
    if not rcfg.enabled or data.ranker_lists is None or data.ranker_lists.frame.empty:
        return None
    frame = data.ranker_lists.frame
    frame = frame[frame["list"] >= frame["list"].max() + 1 - rcfg.max_lists]  # (the fold kept the last train_days)
    group = list_size(ranker_list_settings(settings))
    dense = list_features(settings, spec, frame, group)
    x = ranker_inputs(dense, cross=frame[CROSS_COLUMNS].to_numpy(dtype=np.float32),
                      extras=[frame[[name]].to_numpy(dtype=np.float32) for name in rcfg.extras()])
    del dense
    heads = frame.groupby("list", sort=True)  # lists in frame order
    times = heads["event_time"].first().to_numpy(dtype=np.float64)
    weights = _weights(frame)
    return fit_ranker(rcfg, x, frame["offset"].to_numpy(dtype=np.float32), group, settings.training.seed,
                      (times.max() - times) / DAY_MS, None if weights is None else heads["weight"].first().to_numpy(dtype=np.float32))


def _evaluation(settings: Settings, spec: FeatureSpec, data: training_data.TrainingData) -> Evaluation:
    train, validation = data.train, data.validation
    real_train = train[~train["sampled"]]
    positives = validation[(validation["label"] == 1.0) & ~validation["sampled"]]
    seen = real_train.groupby("user_id")["item_id"].agg(set).to_dict()
    relevant = {u: set(g) - seen.get(u, set()) for u, g in positives.groupby("user_id")["item_id"]}
    relevant = {u: r for u, r in relevant.items() if r}
    counts = real_train[real_train["label"] == 1.0]["item_id"].value_counts()
    catalogue = np.array(sorted(real_train["item_id"].unique()), dtype=object)
    cutoff = int(validation["event_time"].min()) if len(validation) else int(train["event_time"].max()) + 1
    users = sorted(relevant)
    user_dense, user_recent, item_dense = as_of(settings, spec, users, catalogue.tolist(), cutoff)
    return Evaluation(_examples(settings, spec, validation), users, catalogue, user_dense, user_recent, item_dense,
                      relevant, seen, counts.reindex(catalogue).fillna(0).to_numpy(dtype=float), cutoff,
                      data.similarity.at_cutoff if data.similarity is not None else None, categories=data.categories)


def _train(settings: Settings, spec: FeatureSpec, train: Examples, progress: bool, console: Console,
           ids: ModelIds) -> tuple[torch.nn.Module, TrainLog]:
    """In this process, or (``training.nproc > 1``) in torchrun ranks with DistributedModelParallel."""
    cfg, tcfg = settings.model, settings.training
    model = build_model(cfg, spec.n_dense)
    if tcfg.nproc == 1:
        return model, fit(model, dense_optimizer(model, cfg), train, cfg, tcfg.epochs, tcfg.batch_size, tcfg.seed, progress,
                          ids=ids)
    if ids.managed:
        raise ValueError("model.ids=managed trains in one process for now: set training.nproc=1 (or model.ids=hashed)")
    from batch.nightly.train_worker import save_examples

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_examples(work / "examples.npz", train)
        (work / "job.json").write_text(json.dumps({"model": cfg.model_dump(), "n_dense": spec.n_dense, "epochs": tcfg.epochs,
                                                   "batch_size": tcfg.batch_size, "seed": tcfg.seed}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tcfg.nproc}",
                   "-m", "batch.nightly.train_worker", "--examples", str(work / "examples.npz"), "--job", str(work / "job.json"),
                   "--out", str(work / "state.safetensors")]
        console.print(f"training with {tcfg.nproc} processes (torchrun + gloo, DistributedModelParallel) ...")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"distributed training failed (exit {done.returncode}): {done.stderr[-2000:]}\n"
                               "check the output above, or set training.nproc=1 to train in one process")
        model.load_state_dict(load_file(str(work / "state.safetensors")), strict=True)
        losses = json.loads((work / "state.losses.json").read_text())["losses"]
    per_epoch = max(1, len(losses) // tcfg.epochs)
    log = TrainLog([float(np.mean(losses[i:i + per_epoch])) for i in range(0, len(losses), per_epoch)], losses,
                   len(train) * tcfg.epochs, time.perf_counter() - started)
    model.eval()
    return model, log


def build_ids(settings: Settings, train: "pd.DataFrame") -> ModelIds:
    """The row mapping to train with (``models.id_table.training_ids``) from the real events of the
    training set (not the sampled negatives)."""
    if settings.model.ids == "hashed" or train.empty:
        return model_ids(settings.model)
    events = train[~train["sampled"]].sort_values("event_time", kind="stable")
    return training_ids(settings.model, zip(events["user_id"], events["item_id"], events["event_time"].astype(int)))


def load_model(registry: ModelRegistry, version: str) -> tuple[torch.nn.Module, dict]:
    """A registry version as a ready model (weights verified against the manifest)."""
    state, meta = registry.load(version)
    model = build_model(meta.model_settings, FeatureSpec.from_dict(meta["features"]).n_dense)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, meta


def _promotion(tcfg: TrainingSettings, served: str, metrics: dict, served_metrics: dict,
               per_user: dict[str, np.ndarray], served_per_user: dict[str, np.ndarray]) -> tuple[bool, str]:
    """Promote unless the new model is worse than the served one on ``promote_metric``: for top-K
    metrics by more than max(tolerance, promote_z standard errors of the per-user difference),
    otherwise by more than the tolerance."""
    m, tol = tcfg.promote_metric, tcfg.promote_tolerance
    if m in per_user and m in served_per_user and len(per_user[m]) == len(served_per_user[m]) and tcfg.promote_z > 0:
        worse, diff, margin = paired_worse(per_user[m], served_per_user[m], tol, tcfg.promote_z)
        ok = not worse
        how = f"difference {diff:+.4f} over {len(per_user[m])} users, allowed -{margin:.4f}"
    else:
        ok = _better_or_equal(m, metrics[m], served_metrics[m], tol)
        how = f"tolerance {tol}"
    return ok, (f"{m} {metrics[m]:.4f} vs served {served} {served_metrics[m]:.4f} ({how}): "
                + ("promoted" if ok else "NOT promoted, the served model stays"))


def _better_or_equal(metric: str, new: float, old: float, tolerance: float) -> bool:
    if np.isnan(old):
        return True
    if np.isnan(new):
        return False
    return new <= old + tolerance if metric in LOWER_IS_BETTER else new >= old - tolerance


def run(settings: Settings, version: int | None = None, progress: bool = True, promote: bool = True,
        console: Console | None = None) -> RetrainResult:
    """One retrain; ``version`` pins the Delta events table (default: its latest version)."""
    console = console or Console(quiet=not progress)
    cfg, tcfg = settings.model, settings.training
    registry = ModelRegistry(settings.paths.models_dir)
    spec = feature_spec(settings)  # refuses early when the registry was never applied

    data = training_data.build(settings, version=version)
    console.print(f"[bold]retrain[/] events table v{data.table_version}: {len(data.train):,} training rows, "
                  f"{len(data.validation):,} validation rows (split {tcfg.validation})")
    every_ms = int(tcfg.snapshot_every_s * 1000)
    history = FeatureHistory(settings, every_ms)
    try:
        backfill.compute(settings, version=data.table_version, progress=progress, history=history)
    except BaseException:
        history.discard()
        raise
    history.publish()
    console.print(f"point-in-time features ({tcfg.pit_engine} join over the Feast registry's views) ...")
    train = _training_examples(settings, spec, data)
    evaluation = _evaluation(settings, spec, data)

    ids = build_ids(settings, data.train)
    model, log = _train(settings, spec, train, progress, console, ids)
    metrics, per_user = evaluation.metrics(model, ids, tcfg.eval_k, tcfg.batch_size, cfg.cross_features)
    metrics["train_samples_per_s"] = log.samples / log.seconds if log.seconds else float("nan")
    popularity = evaluation.popularity_metrics(tcfg.eval_k)
    ranker = train_ranker(settings, spec, data)
    if ranker is not None:
        metrics.update({f"ranker_{k}": v for k, v in evaluation.ranker_metrics(ranker, tcfg.eval_k).items() if k != "users"})

    served = compared = registry.served()
    served_metrics, served_state, reason = None, None, "first model: nothing is served yet"
    served_per_user: dict[str, np.ndarray] = {}
    if served:
        try:
            served_model, served_meta = load_model(registry, served)
            served_state = served_model.state_dict()  # what servers hold: the delta's base
            # an online version has trained on this validation period: compare with its nightly base
            compared = served_meta.get("online", {}).get("nightly_version", served)
            if compared != served:
                served_model, served_meta = load_model(registry, compared)
            check_compatible(FeatureSpec.from_dict(served_meta["features"]), spec)
            served_cfg = served_meta.model_settings
            served_ids = model_ids(served_cfg, registry.path(compared))
            served_metrics, served_per_user = evaluation.metrics(served_model, served_ids, tcfg.eval_k, tcfg.batch_size,
                                                                 served_cfg.cross_features)
        except (ModelIntegrityError, FeatureSpecMismatch, RuntimeError) as e:
            reason = f"the served {served} cannot be compared ({e}); promoting the new model"
    if served_metrics is not None:
        ok, reason = _promotion(tcfg, compared, metrics, served_metrics, per_user, served_per_user)
    else:
        ok = True

    meta = {"model": cfg.model_dump(), "features": spec.to_dict(), "table_version": data.table_version,
            "feature_registry_digest": spec.registry_digest, "feast_project": settings.features.project,
            "code_version": code_version(), "seed": {"model": cfg.seed, "training": tcfg.seed},
            "training": tcfg.model_dump(), "metrics": metrics, "popularity": popularity,
            "served_version": served, "compared_version": compared, "served_metrics": served_metrics, "loss": log.epoch_loss,
            "examples": {"train": len(train), "validation": len(evaluation.validation)}}
    counts = data.train.loc[~data.train["sampled"], "item_id"].value_counts()
    with tempfile.TemporaryDirectory() as tmp:
        report = _report(Path(tmp) / "report", meta, log, registry.next_version())
        ids_file = ids.save(Path(tmp))
        extra = {IDS_FILE: ids_file} if ids_file else {}
        if data.similarity is not None and (cfg.cross_features or ranker is not None):
            extra[SIMILARITY_FILE] = data.similarity.final.save(Path(tmp))
        if ranker is not None:
            extra[RANKER_FILE] = ranker.save(Path(tmp))
            if data.categories is not None and CATEGORY_NAME in (ranker.extras or ()):
                extra[CATEGORIES_FILE] = data.categories.save(Path(tmp))
        new_version, delta_rows, no_delta = registry.publish_model(
            model.state_dict(), meta, counts.to_dict(), base=(served, served_state) if served_state is not None else None,
            delta_threshold=tcfg.delta_threshold, extra_dirs={"report": report}, extra_files=extra)
    if no_delta:
        console.print(f"[yellow]no delta from {served}:[/] {no_delta}")
    if ok and promote:
        ok = serve_new_version(settings, registry, new_version)  # at once, or to a canary under the guard
        if settings.experiments.rollout.guard_new_versions and registry.served() != new_version:
            reason += (f"; rolled out to {settings.experiments.rollout.canary_share:.0%} of users under the guard "
                       "(`recsys experiment status`)" if ok else "; another rollout is running: not served")
    result = RetrainResult(new_version, ok and promote, reason, metrics, popularity, served, served_metrics,
                           data.table_version, registry.path(new_version) / "report", delta_rows)
    console.print(f"[bold]{new_version}[/]: AUC {metrics['auc']:.4f}, log loss {metrics['logloss']:.4f}, "
                  f"HR@{tcfg.eval_k} {metrics['hr_at_k']:.4f} (popularity {popularity['hr_at_k']:.4f}), "
                  f"NDCG@{tcfg.eval_k} {metrics['ndcg_at_k']:.4f} (popularity {popularity['ndcg_at_k']:.4f}) "
                  f"over {metrics['users']} users; {reason}")
    return result


def _report(directory: Path, meta: dict, log, version: str) -> Path:  # noqa: ANN001 - models.train.TrainLog
    """report.json + report.png (loss curve, metrics vs popularity and the served model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True)
    (directory / "report.json").write_text(json.dumps({**meta, "version": version, "step_loss": log.step_loss}, indent=2, default=str))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.asarray(log.step_loss)
    if len(steps):
        window = max(1, len(steps) // 50)
        left.plot(np.convolve(steps, np.ones(window) / window, mode="valid"))
    left.set(title=f"{version} training loss (moving mean)", xlabel="step", ylabel="BCE")
    names = ["hr_at_k", "ndcg_at_k"]
    bars = {"model": [meta["metrics"][n] for n in names], "popularity": [meta["popularity"][n] for n in names]}
    if meta.get("served_metrics"):
        bars[f"served {meta.get('compared_version') or meta['served_version']}"] = [meta["served_metrics"][n] for n in names]
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        right.bar(np.arange(len(names)) + i * width, values, width, label=label)
    k = meta["training"]["eval_k"]
    right.set_xticks(np.arange(len(names)) + width * (len(bars) - 1) / 2, [f"HR@{k}", f"NDCG@{k}"])
    right.set(title=f"AUC {meta['metrics']['auc']:.3f}, log loss {meta['metrics']['logloss']:.3f}")
    right.legend()
    fig.tight_layout()
    fig.savefig(directory / "report.png", dpi=90)
    plt.close(fig)
    return directory
