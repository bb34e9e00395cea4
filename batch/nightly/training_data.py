"""Training examples from the Delta ``events`` table at a pinned version.

Labels and weights by event type come from the event vocabulary (``streaming.vocabulary``: by
default a rating >= ``rating_threshold`` or a click, cart, purchase, like or share is a positive, a
lower rating an explicit negative, a view carries no label). With the listwise
objective (the default) the training rows are the lists of ``batch.nightly.training_lists`` (one pass
over every valid event); the labelled events and sampled negatives below remain the validation
rows and the record of what was trained on. Each positive also gets
``negatives_per_positive`` sampled items the user had not interacted with, drawn with probability
~ popularity ** power from the training period (never from the validation period), and, with
``impression_negatives``, up to that many more from what the API showed the user and the user did
not engage with (:func:`impression_negatives`): the two counts set the mix. The split is
by time, never random: either everything in the last N days validates, or each user's last N
labelled interactions do. Same table version + seed -> the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from batch.nightly.training_lists import Lists, fold, ranker_list_settings
from infra.settings import Settings
from streaming.lake import open_table
from streaming.events import DAY_MS
from streaming.vocabulary import EventVocabulary
from batch.catalogue import loaded_catalogue
from models.categories import ItemCategories



@dataclass
class TrainingData:
    table_version: int
    examples: pd.DataFrame  # user_id, item_id, label, weight, event_time, split ("train" | "validation"), sampled
    lists: Lists | None = None  # listwise objective: the model's training lists (batch.nightly.training_lists)
    ranker_lists: Lists | None = None  # the candidate ranker's lists (batch.nightly.training_lists.ranker_list_settings)
    categories: ItemCategories | None = None  # the loaded catalogue's, when the ranker reads them

    @property
    def similarity(self) -> Lists | None:
        """Whichever fold ran (both hold the same similarity tables)."""
        return self.lists or self.ranker_lists

    @property
    def train(self) -> pd.DataFrame:
        return self.examples[self.examples["split"] == "train"]

    @property
    def validation(self) -> pd.DataFrame:
        return self.examples[self.examples["split"] == "validation"]


def valid_events(settings: Settings, version: int | None = None) -> tuple[int, pd.DataFrame]:
    """Valid, non-late events with their label (NaN: none) and training weight, ordered by event
    time (then event id)."""
    table = open_table(settings.paths.events_table, version)
    df = table.to_pandas(columns=["event_id", "user_id", "item_id", "event_type", "value", "event_time", "late"])
    df = df[~df["late"]]
    vocab = EventVocabulary.from_settings(settings)
    types = df["event_type"].to_numpy()
    weights = vocab.weight_array(types)
    df = df.assign(label=vocab.label_array(types, df["value"].astype(float).to_numpy()),
                   weight=1.0 if weights is None else weights)
    df = df.sort_values(["event_time", "event_id"], kind="stable").reset_index(drop=True)
    return table.version(), df[["event_id", "user_id", "item_id", "event_type", "event_time", "label", "weight"]]


def labelled_events(settings: Settings, version: int | None = None) -> tuple[int, pd.DataFrame]:
    """Valid, non-late events with a label, ordered by event time (then event id)."""
    table_version, df = valid_events(settings, version)
    return table_version, df.dropna(subset=["label"]).reset_index(drop=True)


def split_by_time(settings: Settings, events: pd.DataFrame) -> pd.Series:
    cfg = settings.training
    if cfg.validation == "last_days":
        cutoff = events["event_time"].max() - cfg.validation_days * DAY_MS
        return pd.Series(np.where(events["event_time"] > cutoff, "validation", "train"), index=events.index)
    rank_from_end = events.groupby("user_id").cumcount(ascending=False)
    return pd.Series(np.where(rank_from_end < cfg.validation_per_user, "validation", "train"), index=events.index)


def build(settings: Settings, version: int | None = None) -> TrainingData:
    """Examples with sampled negatives; ``version`` pins the Delta table (default: latest)."""
    cfg = settings.training
    table_version, every = valid_events(settings, version)
    events = every.dropna(subset=["label"]).reset_index(drop=True)
    if events.empty:
        raise ValueError(f"events table v{table_version} has no labelled events: replay some events first")
    events = events.assign(split=split_by_time(settings, events), sampled=False)
    rng = np.random.default_rng(cfg.seed)
    train = events[events["split"] == "train"]
    popularity = train["item_id"].value_counts()
    catalogue = popularity.index.to_numpy()
    weights = popularity.to_numpy(dtype=float) ** cfg.negative_popularity_power
    weights /= weights.sum()
    seen = events.groupby("user_id")["item_id"].agg(set).to_dict()
    positives = events[events["label"] == 1.0]
    k = cfg.negatives_per_positive
    negatives = impression_negatives(settings, every, positives, seen) if cfg.impression_negatives else []
    if k and len(catalogue):
        draws = rng.choice(len(catalogue), size=(len(positives), k * 3), p=weights)  # spare draws for rejections
        for row, candidates in zip(positives.itertuples(index=False), draws):
            taken = 0
            user_seen = seen[row.user_id]
            for c in candidates:
                item = catalogue[c]
                if item in user_seen:
                    continue
                negatives.append((f"{row.event_id}:neg{taken}", row.user_id, item, row.event_time, 0.0, 1.0, row.split, True))
                taken += 1
                if taken == k:
                    break
    sampled = pd.DataFrame(negatives, columns=["event_id", "user_id", "item_id", "event_time", "label", "weight", "split", "sampled"])
    examples = pd.concat([events, sampled], ignore_index=True).sort_values(["event_time", "event_id"], kind="stable")
    lists = ranker_lists = None
    validating = events.loc[events["split"] == "validation", "event_time"]
    cutoff = int(validating.min()) if len(validating) else int(events["event_time"].max()) + 1
    heads = (every["label"] == 1.0).to_numpy()
    if cfg.objective == "listwise":
        lists = fold(settings, every, heads, cutoff)
    categories = training_categories(settings)
    if settings.ranker.enabled:
        days = settings.ranker.train_days  # the ranker trains on the lists of its last train_days only
        ranker_lists = fold(settings, every, heads, cutoff, lists=ranker_list_settings(settings),
                            since_ms=cutoff - int(days * DAY_MS) if days else None, categories=categories)
    return TrainingData(table_version, examples.reset_index(drop=True), lists, ranker_lists, categories)


def shown_not_engaged(settings: Settings, events: pd.DataFrame) -> dict[str, tuple[list[int], list[str]]]:
    """Per user, the items the API showed and the user did not engage with within the attribution
    window, as (times their window closed, items), sorted by that time: from the lake's
    ``impressions`` table (empty when there is none yet), judged against ``events`` (the pinned
    table's valid events) with batch.attribution's definition."""
    from batch.attribution import engaged, events_frame, lake_impressions

    try:
        shown = lake_impressions(settings.paths.impressions_table)
    except FileNotFoundError:
        return {}
    if shown.empty:
        return {}
    window_ms = int(settings.attribution.window_s * 1000)
    engaging = EventVocabulary.from_settings(settings).engaging(settings.attribution.event_types)
    typed = events_frame(events[["event_id", "user_id", "item_id", "event_type", "event_time"]].to_dict("records"))
    shown = shown[shown["shown_at"] + window_ms <= int(events["event_time"].max())]  # outcomes the table can know
    missed = shown[~engaged(shown, typed, window_ms, engaging)].assign(closed=lambda f: f["shown_at"] + window_ms)
    missed = missed.sort_values(["user_id", "closed"], kind="stable")
    return {user: (g["closed"].tolist(), g["item_id"].tolist()) for user, g in missed.groupby("user_id", sort=False)}


def impression_negatives(settings: Settings, every: pd.DataFrame, positives: pd.DataFrame,
                         seen: dict[str, set[str]]) -> list[tuple]:
    """Up to ``training.impression_negatives`` negatives per positive from the user's shown and
    not engaged items. Point-in-time: only lists whose attribution window had closed by the
    positive's time (their outcome was known then), newest first; never an item the user ever
    interacted with (as for sampled negatives)."""
    from bisect import bisect_right

    missed = shown_not_engaged(settings, every)
    k = settings.training.impression_negatives
    out = []
    for row in positives.itertuples(index=False):
        closed, items = missed.get(row.user_id, ((), ()))
        taken, used = 0, set()
        for j in range(bisect_right(closed, row.event_time) - 1, -1, -1):
            item = items[j]
            if item in used or item in seen[row.user_id]:
                continue
            used.add(item)
            out.append((f"{row.event_id}:imp{taken}", row.user_id, item, row.event_time, 0.0, 1.0, row.split, True))
            taken += 1
            if taken == k:
                break
    return out


def training_categories(settings: Settings) -> ItemCategories | None:
    """The loaded catalogue's categories when the ranker reads them (``ranker.category_affinity``)."""
    if not (settings.ranker.enabled and settings.ranker.category_affinity):
        return None
    frame = loaded_catalogue(settings)
    if frame is None:
        raise ValueError("ranker.category_affinity reads the catalogue's categories, and none is loaded: "
                         "`recsys catalogue load <file>` (e.g. ../shared/data/ml-100k/u.item), or turn the setting off")
    return ItemCategories.from_pairs(frame["item_id"].tolist(), frame["category"].tolist())
