"""The model code's own configuration: the TorchRec ranking model and the candidate ranker.

``models/`` is a library below the app: it takes these two small objects, never the engine's
settings. The engine's settings (infra.settings) hold one of each, as its ``model`` and
``ranker`` sections.

>>> ModelSettings(embedding_dim=16, dense_arch=[64, 32]).dense_arch  # the dense tower ends at the embedding width
[64, 16]
>>> ModelSettings.from_meta({"embedding_dim": 8}).cross_features  # a version from before the field existed
False
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class ModelSettings(BaseModel):
    """The TorchRec ranking model (models.ranking)."""

    embedding_dim: int = Field(default=32, ge=1)
    user_buckets: int = Field(default=100_000, ge=1, description="rows of the user table; ids are hashed into them")
    item_buckets: int = Field(default=50_000, ge=1, description="rows of the item table (item id and recent items share it)")
    dense_arch: list[int] = [64, 32]
    over_arch: list[int] = [64, 32]
    sparse_lr: float = Field(default=0.05, gt=0, description="row-wise Adagrad, applied in backward")
    ids: str = Field(default="hashed", pattern="^(hashed|managed)$", description="id -> row: crc32 buckets, or a managed table (own row per admitted id, no collisions; models.id_table)")
    id_min_count: int = Field(default=2, ge=1, description="managed: occurrences before an id gets its own row (until then it shares row 0)")
    id_ttl_days: float | None = Field(default=90.0, gt=0, description="managed: an id unseen this long (event time) loses its row; None = never")
    dense_lr: float = Field(default=0.01, gt=0)
    cross_features: bool = Field(default=False, description="the ranker also sees user x candidate neighbourhood features (models.cross_features) from the version's item similarity (needs training.objective=listwise; not yet better than without: docs/quality.md)")
    similarity_top_k: int = Field(default=200, ge=1, description="neighbours kept per item in a version's similarity table (models.similarity)")
    similarity_pair_with: int | None = Field(default=20, ge=1, description="a user's new item co-occurs with their previous N distinct items (None: all)")
    seed: int = 0

    @classmethod
    def from_meta(cls, stored: dict) -> "ModelSettings":
        """The settings a registry version was trained with (versions from before a field existed
        get the value that reproduces them: no cross features)."""
        return cls(**{"cross_features": False, **stored})

    @model_validator(mode="after")
    def _dense_arch_ends_at_embedding_dim(self) -> "ModelSettings":
        if not self.dense_arch or self.dense_arch[-1] != self.embedding_dim:
            self.dense_arch = [*self.dense_arch[:-1], self.embedding_dim] if self.dense_arch else [self.embedding_dim]
        return self


class RankerSettings(BaseModel):
    """The candidate ranker (models.list_ranker): what orders the served candidates.

    A small MLP over each candidate's entity features and its neighbourhood (cross) features,
    trained at each retrain with a softmax over lists of the item taken and everything else the
    candidate sources proposed with it: the pool is ``serving.similar_candidates`` +
    ``serving.popular_candidates`` (batch.nightly.training_lists.ranker_list_settings), so it learns
    exactly the ranking the API asks of it."""

    enabled: bool = Field(default=True, description="rank served candidates with the list ranker (False: the TorchRec model's scores)")
    hidden: list[int] = Field(default=[32], description="hidden layer widths")
    epochs: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-3, gt=0, description="Adam")
    batch_lists: int = Field(default=256, ge=1, description="lists per step")
    train_days: float | None = Field(default=90.0, gt=0, description="train on the lists of the last N days of event time (None: all)")
    max_lists: int = Field(default=20_000, ge=1, description="and at most the newest N lists (each is as long as the served candidate pool: bounds the retrain's memory)")
    half_life_days: float | None = Field(default=None, gt=0, description="weight each training list by 0.5 ** (its age in days / this) at the retrain (None: all lists alike)")
    item_age: bool = Field(default=False, description="the candidate's days since its first interaction is an input (models.cross_features.item_age; lost on the validation window: docs/quality.md)")
    category_affinity: bool = Field(default=False, description="the share of the user's recent items in the candidate's categories is an input (models.categories; needs a loaded catalogue: `recsys catalogue load`)")

    def extras(self) -> tuple[str, ...]:
        """The optional inputs this ranker reads after the cross features, in order."""
        from models.cross_features import AGE_NAME, CATEGORY_NAME

        return tuple(name for name, on in ((AGE_NAME, self.item_age), (CATEGORY_NAME, self.category_affinity)) if on)


__all__ = ["ModelSettings", "RankerSettings"]
