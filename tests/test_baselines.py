"""The yardsticks on tiny hand-made streams: each gives the ranking worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from batch.evaluate.baselines import build_baselines
from infra.settings import EvaluationSettings
from models.baselines import EASE, ItemKNN, Popularity, SASRec


def feed(model, stream: dict[str, list[int]]) -> None:
    for user, items in stream.items():
        for t, item in enumerate(items):
            model.learn(user, item, t)


def ranking(model, user: str, items: list[int]) -> list[int]:
    scores = model.scores(user, np.array(items))
    return [items[i] for i in np.argsort(-scores, kind="stable")]


def test_popularity_counts_every_interaction():
    pop = Popularity()
    feed(pop, {"a": [0, 1], "b": [1, 2], "c": [1, 2, 3]})
    assert ranking(pop, "new", [0, 1, 2, 3]) == [1, 2, 0, 3]  # 3, 2, 1, 1 interactions: ties keep catalogue order


def test_item_knn_prefers_neighbours_of_the_newest_items():
    stream = {"a": [0, 1], "b": [0, 1], "c": [1, 2, 3], "d": [2, 3], "u": [3, 1]}
    # users per item: n0=2, n1=4 (a, b, c, u), n2=2, n3=3 (c, d, u); co-occurrence C(1,0)=2, C(1,2)=1,
    # C(3,2)=2, C(3,0)=0. u's newest is 1 (weight 1), then 3 (weight decay):
    # score(0) = 2/sqrt(4*2) = 0.707; score(2) = 1/sqrt(4*2) + decay * 2/sqrt(3*2) = 0.354 + decay * 0.816
    steep = ItemKNN(recent=2, decay=0.25, pair_with=None)
    feed(steep, stream)
    assert ranking(steep, "u", [0, 2]) == [0, 2]  # 0.707 > 0.558
    flat = ItemKNN(recent=2, decay=0.5, pair_with=None)
    feed(flat, stream)
    assert ranking(flat, "u", [0, 2]) == [2, 0]  # 0.762 > 0.707
    assert flat.scores("u", np.array([0, 2])) == pytest.approx([2 / 8 ** 0.5, 1 / 8 ** 0.5 + 0.5 * 2 / 6 ** 0.5], abs=1e-6)
    last_only = ItemKNN(recent=1, decay=0.5, pair_with=None)
    feed(last_only, stream)
    assert ranking(last_only, "u", [0, 2]) == [0, 2]  # only item 1 votes


def test_item_knn_pairs_only_with_the_previous_items_it_is_told_to():
    knn = ItemKNN(recent=1, decay=1.0, pair_with=1)
    feed(knn, {"a": [0, 1, 2]})  # pairs (0,1) and (1,2), not (0,2)
    knn.learn("u", 0, 0)
    assert knn.scores("u", np.array([1, 2]))[1] < 1e-6  # only the popularity tie-break is left for 2
    assert ranking(knn, "u", [2, 1]) == [1, 2]


def test_item_knn_repeated_interaction_is_not_a_new_pair():
    knn = ItemKNN(recent=5, decay=1.0, pair_with=None)
    feed(knn, {"a": [0, 1, 0, 1, 0]})
    assert knn.counts[0] == {1: 1.0} and knn.co.users(np.array([0, 1])).tolist() == [1.0, 1.0]


def test_ease_scores_co_occurring_items_above_the_rest_and_uncovered_items_last():
    ease = EASE(l2=1.0, max_items=3)  # item 3 (one interaction) is outside the closed form
    feed(ease, {"a": [0, 1], "b": [0, 1], "c": [1, 2], "d": [2, 0], "e": [3]})
    ease.refit(0)
    ease.learn("u", 0, 0)
    # X^T X + I over items 0..2 = [[4,2,1],[2,4,1],[1,1,3]]: B[0,1] = 2/11 ... > B[0,2] = 1/11 ... > 0
    assert ranking(ease, "u", [3, 2, 1]) == [1, 2, 3]
    weights = ease.weights
    assert np.allclose(np.diag(weights), 0.0)
    gram = np.array([[4.0, 2, 1], [2, 4, 1], [1, 1, 3]])
    inverse = np.linalg.inv(gram)
    expected = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(expected, 0.0)
    order = ease.covered.tolist()  # B's rows/columns follow popularity: 0, 1, 2 (ties in index order)
    assert order == [0, 1, 2]
    assert np.allclose(weights, expected, atol=1e-6)


def walks(users: int = 60) -> dict[str, list[int]]:
    """Users walk the chain 0 -> 1 -> ... -> 7 from different starts for different lengths."""
    return {f"u{n}": list(range(n % 5, n % 5 + 2 + n % 3 + 1)) for n in range(users)}


@pytest.mark.parametrize("full_softmax_items", [50_000, 2])  # full softmax; sampled softmax over uniform negatives
def test_sasrec_learns_the_order_of_a_sequence(full_softmax_items):
    """After 1 comes 2, after 2 -> 3 comes 4, whatever the user saw before."""
    model = SASRec(dim=16, max_len=5, layers=1, dropout=0.0, lr=1e-2, batch_size=16, epochs=40,
                   full_softmax_items=full_softmax_items, negatives=6, seed=0)
    feed(model, walks())
    model.refit(0)
    catalogue = list(range(8))
    model.learn("new", 1, 0)
    assert ranking(model, "new", catalogue)[0] == 2
    model.learn("new", 2, 1)
    model.learn("new", 3, 2)
    assert ranking(model, "new", catalogue)[0] == 4
    model.learn("new", 9, 3)  # an item newer than the last fit: no row yet, so it is skipped in the history
    assert ranking(model, "new", catalogue)[0] == 4
    assert np.isneginf(model.scores("new", np.array([0, 9]))[1])  # ... and scored below every item the model knows


def test_baselines_come_from_the_settings():
    cfg = EvaluationSettings(baselines=["ease", "item_knn"], item_knn={"decay": 0.5}, ease={"l2": 7.0})
    built = build_baselines(cfg)
    assert list(built) == ["ease", "item_knn"]
    assert built["item_knn"].decay == 0.5 and built["ease"].l2 == 7.0
    with pytest.raises(ValueError, match="choose from item_knn, ease, sasrec"):
        EvaluationSettings(baselines=["knn"])
