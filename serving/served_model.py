"""One immutable, ready-to-score model version: weights, feature spec, catalogue and lineage.

The server never changes a :class:`ServedModel` after it is built; a new version is a new object
and the swap is one reference assignment (``serving.hot_swap``), so a request that picked up a
model finishes on it even if a newer one arrives meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np
import torch

from features.model_inputs import FeatureSpec
from models.config import ModelSettings
from models.delta import state_digest
from models.registry import VersionMeta
from models.id_table import ModelIds, id_rows
from models.categories import ItemCategories
from models.cross_features import DECAY, RECENT, cross_features, ranker_extras
from models.ranking import Batch, build_model, dense_width, item_embeddings, predict
from models.list_ranker import ListRanker, for_ranker, ranker_inputs
from models.similarity import SimilarityTable, top_similar


PAD = 32  # batches are padded to a multiple of this: a handful of shapes, each warmed up at load


class SmokeTestFailed(ValueError):
    """A freshly loaded model gives non-finite or out-of-range scores."""


@dataclass(frozen=True)
class Lineage:
    """How the served weights came to be (shown by GET /model)."""

    loaded_from: str  # "full" or "delta"
    deltas: tuple[str, ...] = ()  # delta directories applied, oldest first ("v0003/delta-from-v0002")
    base_version: str | None = None  # the served version the deltas were merged onto
    loaded_at: float = field(default_factory=time.time)
    load_ms: float = 0.0


@dataclass(frozen=True, eq=False)
class ServedModel:
    version: str
    model: torch.nn.Module
    cfg: ModelSettings
    spec: FeatureSpec
    meta: dict
    state: Mapping[str, torch.Tensor]  # the weights (the base the next delta merges onto)
    catalogue: np.ndarray  # item ids, most trained-on first
    counts: np.ndarray  # their training counts
    index: dict[str, int]
    item_rows: torch.Tensor  # embedding rows of the catalogue items
    item_unit: torch.Tensor  # their embeddings, L2-normalised (nearest neighbours)
    lineage: Lineage
    ids: ModelIds  # which row each user/item id uses (hashed, or the version's managed tables)
    known_digest: str | None = None  # the weights' digest when the loader verified it already (a merged delta)
    similarity: SimilarityTable = field(default_factory=SimilarityTable.empty)  # the version's item neighbours
    ranker: ListRanker | None = None  # the version's candidate ranker (None: the TorchRec model ranks)
    categories: ItemCategories | None = None  # the catalogue's categories, when the version's ranker reads them

    @cached_property
    def digest(self) -> str:
        """Digest of the weights (``models.delta.state_digest``): the next delta's base check."""
        return self.known_digest or state_digest(self.state)

    @classmethod
    def build(cls, version: str, state: Mapping[str, torch.Tensor], meta: dict, items: Sequence[str],
              counts: Sequence[int], lineage: Lineage, warm_up: bool = True,
              digest: str | None = None, ids: ModelIds | None = None,
              similarity: SimilarityTable | None = None, ranker: ListRanker | None = None,
              categories: ItemCategories | None = None) -> "ServedModel":
        """``warm_up=False`` when a model of the same architecture already ran in this process
        (a merged delta): its batch shapes are planned already."""
        cfg = VersionMeta(meta).model_settings
        spec = FeatureSpec.from_dict(meta["features"])
        model = build_model(cfg, spec.n_dense, table_device="meta")  # tables come from ``state``, not a random init
        model.load_state_dict(dict(state), strict=True, assign=True)
        model.eval()
        catalogue = np.asarray(list(items), dtype=object)
        ids = ids or id_rows(cfg)
        rows = ids.items.rows(catalogue.tolist())
        vectors = item_embeddings(model).index_select(0, rows)
        unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        served = cls(version, model, cfg, spec, meta, model.state_dict(), catalogue, np.asarray(counts, dtype=np.float64),
                     {item: i for i, item in enumerate(catalogue)}, rows, unit, lineage, ids, digest,
                     similarity if similarity is not None else SimilarityTable.empty(), ranker, categories)
        served.smoke_test()
        if warm_up:
            served.warm_up()
        return served

    def item_rows_for(self, items: Sequence[str]) -> torch.Tensor:
        idx = [self.index.get(i, -1) for i in items]
        if all(i >= 0 for i in idx):
            return self.item_rows[torch.tensor(idx, dtype=torch.long)]
        return self.ids.items.rows(items)

    def score(self, user_id: str, recent: Sequence[str], user_dense: np.ndarray, items: Sequence[str],
              item_dense: np.ndarray, now_ms: int | None = None) -> np.ndarray:
        """Each item's score for this user, in (0, 1), higher is better (features already
        transformed): the candidate ranker's when the version has one (a ranking score), else the
        TorchRec model's positive-interaction probability. ``now_ms``: the time the items' ages
        are taken at, for a ranker trained with them (the recommender passes the stream's event
        clock; default: now)."""
        n = len(items)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        if self.ranker is not None:
            x = ranker_inputs(user_dense.reshape(1, -1), item_dense, cross=cross_features(self.similarity, recent, items))
            x = for_ranker(self.ranker, x, ranker_extras(self.similarity, self.categories, recent, items,
                                                         int(time.time() * 1000) if now_ms is None else now_ms))
            return (1.0 / (1.0 + np.exp(-self.ranker.score(x).astype(np.float64)))).astype(np.float32)
        # CPU kernels are planned per input shape; padding keeps the set of shapes small and warm
        size = -(-n // PAD) * PAD
        recent_rows = self.ids.items.rows(recent)
        entity = user_dense.size + item_dense.shape[1]
        dense = np.zeros((size, dense_width(self.cfg, entity)), dtype=np.float32)
        dense[:, :user_dense.size] = user_dense.reshape(1, -1)
        dense[:n, user_dense.size:entity] = item_dense
        if self.cfg.cross_features:
            dense[:n, entity:] = cross_features(self.similarity, recent, items)
        rows = self.item_rows_for(items)
        rows = torch.cat([rows, rows[:1].expand(size - n)]) if size > n else rows
        batch = Batch.one_user(self.ids.users.rows([user_id]), rows, recent_rows, torch.from_numpy(dense))
        return predict(self.model, batch).numpy()[:n]

    def similar(self, recent: Sequence[str], n: int, exclude: set | frozenset = frozenset()) -> list[str]:
        """The user's item-kNN list over this version's similarity table (best first)."""
        return [str(i) for i in top_similar(self.similarity, recent, n, DECAY, RECENT, exclude)]

    def nearest(self, recent: Sequence[str], n: int) -> list[tuple[str, float]]:
        """Catalogue items closest (cosine) to the mean embedding of the user's recent items."""
        if not recent or n <= 0 or not len(self.catalogue):
            return []
        table = item_embeddings(self.model)
        query = table.index_select(0, self.ids.items.rows(recent)).mean(dim=0)
        query = query / query.norm().clamp_min(1e-12)
        sims = self.item_unit @ query
        top = torch.topk(sims, min(n, len(self.catalogue)))
        return [(self.catalogue[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def warm_up(self, max_candidates: int = 512) -> None:
        """Run every padded batch shape once, so the first requests don't pay for kernel planning."""
        items = (self.catalogue.tolist() or ["__probe_item__"]) * (max_candidates // max(1, len(self.catalogue)) + 1)
        user = np.zeros(len(self.spec.user_refs), dtype=np.float32)
        for n in range(PAD, max_candidates + 1, PAD):
            self.score("__probe_user__", items[:5], user, items[:n], np.zeros((n, len(self.spec.item_refs)), dtype=np.float32))

    def smoke_test(self) -> None:
        """Score a few catalogue items for a probe user: every score must be a probability."""
        items = self.catalogue[:16].tolist() or ["__probe_item__"]
        scores = self.score("__probe_user__", items[:3], np.zeros(len(self.spec.user_refs), dtype=np.float32), items,
                            np.zeros((len(items), len(self.spec.item_refs)), dtype=np.float32))
        if not np.all(np.isfinite(scores)) or np.any(scores < 0) or np.any(scores > 1):
            raise SmokeTestFailed(f"model {self.version} gives invalid scores on a probe batch ({scores[:4]}...): "
                                  "its weights are broken; keep serving the current model and retrain")
