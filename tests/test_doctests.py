"""Doctests in the modules are examples users copy; they must run."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["infra.settings", "infra.kafka_clients", "streaming.lateness", "streaming.job.micro_batch", "streaming.job.item_updates", "models.config", "streaming.events", "streaming.synthetic", "streaming.replay", "streaming.ordering", "features.compute", "features.names", "features.model_inputs", "models.ids", "models.evaluate", "infra.schedule", "features.live", "serving.recommender", "streaming.vocabulary", "streaming.log_files", "batch.catalogue", "models.categories", "streaming.synthetic_log", "infra.periodic", "models.id_table", "batch.evaluate.prequential_report", "batch.evaluate.catalogue_churn", "models.baselines.item_knn", "models.baselines.ease", "models.baselines.popularity", "models.baselines.growable", "models.similarity", "models.cross_features", "streaming.job.stream_metrics", "streaming.lake", "batch.evaluate.holdout", "models.list_ranker", "serving.impressions", "batch.attribution"])
def test_module_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0
