"""The candidate ranker: orders what the candidate sources propose, trained on lists of them.

The TorchRec model learns one row per user and per item; with a few hundred events per item its
rows memorise, and what decides a top-10 list (how close a candidate is to what the user just
did, how alive it is now) sits in features it mixes with those rows. This ranker reads only
features: the registry's user and item features and the neighbourhood (cross) features of
:mod:`models.cross_features`, standardised with the training set's mean and spread, through a
small MLP. It is trained the way it is used: each positive the candidate sources proposed is a
list of the item taken and every other candidate they proposed with it
(``batch.nightly.training_lists.ranker_list_settings``), with a softmax cross-entropy over the list;
short lists are padded with rows whose :data:`PADDING` offset takes them out (every list design
tried, with its numbers: docs/quality.md).

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200 * 5, 3)).astype(np.float32)
>>> x[::5, 0] += 3.0  # the first of each list of 5 (the one taken) stands out on feature 0
>>> ranker = fit_ranker(RankerSettings(epochs=20, batch_lists=32), x, np.zeros(len(x), np.float32), group=5)
>>> scores = ranker.score(x[:10])
>>> bool(scores[0] > scores[1:5].max()) and bool(scores[5] > scores[6:10].max())
True
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from models.config import RankerSettings

RANKER_FILE = "ranker.pt"  # in a version's directory, next to the TorchRec weights
PADDING = -1e4  # the logit offset of a padding row (a list whose pool was short): no weight in the softmax


class ListRanker(nn.Module):
    def __init__(self, n_in: int, hidden: list[int], extras: tuple[str, ...] | None = ()) -> None:
        """``extras``: the names of the optional inputs after the cross features, in order
        (``RankerSettings.extras``); None for a ranker saved before they were recorded."""
        super().__init__()
        self.extras = None if extras is None else tuple(extras)
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.hidden = list(hidden)

    @property
    def n_in(self) -> int:
        return int(self.mean.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.scale).squeeze(-1)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores (higher is better; comparable within one user's candidates), shape (len(x),)."""
        if x.shape[1] != self.n_in:
            raise ValueError(f"the ranker reads {self.n_in} features per candidate, got {x.shape[1]}: "
                             "the version's features changed since it was trained; retrain")
        with torch.no_grad():
            return self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        names = {} if self.extras is None else {"extras": list(self.extras)}  # None stays unrecorded
        torch.save({"n_in": self.n_in, "hidden": self.hidden, **names, "state": self.state_dict()}, buffer)
        return buffer.getvalue()

    def save(self, directory: Path) -> Path:
        path = Path(directory) / RANKER_FILE
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: Path) -> "ListRanker":
        try:
            raw = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
            extras = tuple(str(e) for e in raw["extras"]) if "extras" in raw else None
            ranker = cls(int(raw["n_in"]), [int(h) for h in raw["hidden"]], extras)
            ranker.load_state_dict(raw["state"])
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"{path}: not a readable ranker file ({exc}); retrain to write a new version") from exc
        ranker.eval()
        return ranker


def ranker_inputs(*entity: np.ndarray, cross: np.ndarray, extras: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The one row layout the ranker is trained and served on: each candidate's entity feature
    blocks (user's, then item's, as the feature spec orders them; a one-row block is repeated for
    every candidate), then its cross features, then its optional inputs (``RankerSettings.extras``:
    the item age, the category affinity) as one-column blocks.

    >>> ranker_inputs(np.array([[1.0, 2.0]]), np.array([[3.0], [4.0]]), cross=np.array([[5.0], [6.0]])).tolist()
    [[1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 6.0]]
    """
    n = len(cross)
    blocks = [np.broadcast_to(np.atleast_2d(np.asarray(b, dtype=np.float32)), (n, b.shape[-1])) for b in entity]
    tail = [np.asarray(cross, dtype=np.float32), *(np.asarray(e, dtype=np.float32).reshape(n, -1) for e in extras)]
    return np.concatenate([*blocks, *tail], axis=1)


def for_ranker(ranker: "ListRanker", x: np.ndarray, extras: Mapping[str, Callable[[], np.ndarray]]) -> np.ndarray:
    """Rows of entity + cross features, completed for ``ranker``: only the optional inputs it was
    trained with are computed (``extras``: name -> how to compute that column) and appended in its
    order. A ranker saved before the names were recorded read the item age at most, told by its width.

    >>> rows = np.ones((3, 2), np.float32)
    >>> age = {"log_item_age_days": lambda: np.zeros((3, 1)), "category_affinity": lambda: 1 / 0}
    >>> for_ranker(ListRanker(2, [4]), rows, age).shape, for_ranker(ListRanker(3, [4], ("log_item_age_days",)), rows, age).shape
    ((3, 2), (3, 3))
    >>> for_ranker(ListRanker(3, [4], None), rows, age).shape  # an old ranker trained with the age
    (3, 3)
    """
    names = ranker.extras
    if names is None:  # saved before the names were recorded: one extra column could only be the age
        names = ("log_item_age_days",) if x.shape[1] + 1 == ranker.n_in else ()
    missing = [n for n in names if n not in extras]
    if missing:
        raise ValueError(f"the ranker reads {missing}, which this caller cannot compute: retrain (`recsys retrain`)")
    if names:
        x = np.concatenate([x, *(np.asarray(extras[n](), dtype=np.float32).reshape(len(x), -1) for n in names)], axis=1)
    if x.shape[1] != ranker.n_in:
        raise ValueError(f"the ranker takes {ranker.n_in} inputs, these rows have {x.shape[1]}: the feature "
                         "registry changed since it was trained; retrain (`recsys retrain`)")
    return x


def fit_ranker(cfg: RankerSettings, x: np.ndarray, offsets: np.ndarray, group: int, seed: int = 0,
               age_days: np.ndarray | None = None, list_weights: np.ndarray | None = None) -> ListRanker:
    """Train on ``len(x) // group`` lists of ``group`` consecutive rows, the first of each the
    item taken; ``offsets`` are added to the logits during training only (``batch.nightly.training_lists``;
    :data:`PADDING` marks a row that is not there). ``age_days``: each list's age at this
    retrain, which weighs it when ``cfg.half_life_days`` is set. ``list_weights``: each list's own
    weight (its event type's, ``streaming.vocabulary``), multiplied in."""
    if group < 2 or len(x) % group or not len(x):
        raise ValueError(f"{len(x)} rows do not make lists of {group} (one item taken and at least one other)")
    torch.manual_seed(seed)
    ranker = ListRanker(x.shape[1], cfg.hidden, cfg.extras())
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    real = features[torch.from_numpy(np.asarray(offsets) > PADDING / 2)]  # padding rows are not data
    ranker.mean.copy_(real.mean(dim=0))
    ranker.scale.copy_(real.std(dim=0).clamp_min(1e-6))
    lists = features.reshape(-1, group, x.shape[1])
    shift = torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.float32)).reshape(-1, group)
    optimizer = torch.optim.Adam(ranker.parameters(), lr=cfg.lr)
    target = torch.zeros(cfg.batch_lists, dtype=torch.long)
    weight = torch.ones(len(lists))
    if cfg.half_life_days and age_days is not None:
        weight = torch.from_numpy(0.5 ** (np.asarray(age_days, dtype=np.float64) / cfg.half_life_days)).float()
    if list_weights is not None:
        weight = weight * torch.from_numpy(np.asarray(list_weights, dtype=np.float32))
    generator = torch.Generator().manual_seed(seed)
    ranker.train()
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(lists), generator=generator).split(cfg.batch_lists):
            logits = ranker(lists[batch]) + shift[batch]
            w = weight[batch]
            loss = (nn.functional.cross_entropy(logits, target[:len(batch)], reduction="none") * w).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    ranker.eval()
    return ranker
