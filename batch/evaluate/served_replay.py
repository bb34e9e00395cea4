"""What the API would have served, on a replay: the serving code itself, reading the replay's state.

The API answers with ``serving.recommender.Recommender.recommend``: candidate sources, trending
slots, filters and the ranker as they are composed for users. A replay scores exactly that call
(not a copy of it): the recommender reads features through ``features.live.LiveReader`` (the
state the stream job would have written to Redis) instead of the online store, the item snapshot
is refreshed from the same state, and the model is what the registry would hold: each retrain,
then each online publish, wrapped as a :class:`~serving.served_model.ServedModel`.

The caller knows the user's whole history, so it is passed as ``exclude`` (what a backend that
knows past purchases or ratings does); the API's own ``filter_seen`` covers the recent items.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch

from features.live import LiveFeatures
from features.model_inputs import FeatureSpec
from infra.settings import Settings
from models.id_table import ModelIds
from models.categories import ItemCategories
from models.list_ranker import ListRanker
from models.similarity import SimilarityTable
from serving.item_snapshot import ItemSnapshot, ItemSnapshotter
from serving.recommender import Recommendation, Recommender
from serving.served_model import Lineage, ServedModel


class ServedReplay:
    def __init__(self, settings: Settings, spec: FeatureSpec, features: LiveFeatures) -> None:
        self.settings = settings
        self.spec = spec
        self.recommender = Recommender(settings, readers=features.reader)
        self._model: ServedModel | None = None
        self.snapshots = ItemSnapshotter(settings, lambda: self._model, settings.serving.item_refresh_s,
                                         readers=features.reader)
        self._pending: tuple | None = None
        self.published = 0

    def publish(self, model: torch.nn.Module, ids: ModelIds, catalogue: Mapping[str, int],
                similarity: SimilarityTable | None = None, ranker: ListRanker | None = None,
                categories: ItemCategories | None = None) -> None:
        """A new version reaches the API (a retrain or an online publish); it is wrapped when a
        request needs it, with the weights as they are now."""
        self._pending = (model, copy.deepcopy(ids) if ids.managed else ids, dict(catalogue), similarity, ranker, categories)
        self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # later steps must not leak in

    def _served(self) -> ServedModel:
        if self._pending is not None:
            model, ids, counts, similarity, ranker, categories = self._pending
            items = sorted(counts, key=lambda i: -counts[i])  # most trained-on first, as the registry orders them
            self.published += 1
            meta = {"model": self.settings.model.model_dump(), "features": self.spec.to_dict()}
            self._model = ServedModel.build(f"replay-{self.published}", self._state, meta, items,
                                            [counts[i] for i in items], Lineage("full"), warm_up=False, ids=ids,
                                            similarity=similarity, ranker=ranker, categories=categories)
            self._pending = None
        if self._model is None:
            raise RuntimeError("nothing published yet: call publish() with the first model")
        return self._model

    def recommend(self, user_id: str, k: int, exclude: Sequence[str]) -> Recommendation:
        model = self._served()
        snapshot: ItemSnapshot | None = self.snapshots.refresh(model)  # re-reads only the items that changed
        return self.recommender.recommend(model, snapshot, user_id, k, exclude=frozenset(exclude))
