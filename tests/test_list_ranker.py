"""The candidate ranker: learns from lists, round-trips through its file, and orders what the API serves."""

from __future__ import annotations

import numpy as np
import pytest

from models.config import RankerSettings
from models.list_ranker import RANKER_FILE, ListRanker, fit_ranker, for_ranker, ranker_inputs


def lists(n: int = 300, group: int = 6, seed: int = 0) -> np.ndarray:
    """Lists whose first row (the item taken) is the one with the largest feature 1; feature 0 is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n * group, 2)).astype(np.float32)
    x[::group, 1] = np.abs(x[::group, 1]) + 2.0
    return x


def test_the_ranker_learns_what_the_taken_item_has_and_survives_a_round_trip(tmp_path):
    x = lists()
    ranker = fit_ranker(RankerSettings(epochs=10, batch_lists=32), x, np.zeros(len(x), np.float32), group=6)
    held = lists(seed=1).reshape(-1, 6, 2)
    firsts = [np.argmax(ranker.score(lst)) == 0 for lst in held]
    assert np.mean(firsts) > 0.95
    path = ranker.save(tmp_path)
    assert path.name == RANKER_FILE
    again = ListRanker.load(path)
    assert np.allclose(again.score(held[0]), ranker.score(held[0]))
    with pytest.raises(ValueError, match="reads 2 features"):
        again.score(np.zeros((3, 5), np.float32))


def test_padding_rows_do_not_count():
    """A padded list (offset -1e4) trains as if the padding were not there."""
    x = lists(n=100)
    padded = x.copy()
    offsets = np.zeros(len(x), np.float32)
    padded[5::6] = 100.0  # garbage in the padding rows ...
    offsets[5::6] = -1e4  # ... that the softmax never sees
    cfg = RankerSettings(epochs=3, batch_lists=16)
    a = fit_ranker(cfg, np.delete(x, np.s_[5::6], axis=0), np.zeros(500, np.float32), group=5)
    b = fit_ranker(cfg, padded, offsets, group=6)
    probe = lists(n=5, seed=3)
    assert np.allclose(a.score(probe), b.score(probe), atol=0.02)  # float summation order only (garbage: off by >1)


def test_an_unreadable_ranker_file_names_itself(tmp_path):
    path = tmp_path / RANKER_FILE
    path.write_bytes(b"not a ranker")
    with pytest.raises(ValueError, match=RANKER_FILE):
        ListRanker.load(path)


def test_list_sizes_that_do_not_make_lists_are_refused():
    with pytest.raises(ValueError, match="lists of 4"):
        fit_ranker(RankerSettings(), np.zeros((10, 2), np.float32), np.zeros(10, np.float32), group=4)


def test_a_ranker_computes_only_the_inputs_it_was_trained_with(tmp_path):
    import io

    import torch

    from models.cross_features import AGE_NAME, CATEGORY_NAME

    plain = fit_ranker(RankerSettings(epochs=2), lists(), np.zeros(300 * 6, np.float32), group=6)
    x = ranker_inputs(np.ones((1, 1)), np.zeros((4, 1)), cross=np.ones((4, 0)))
    fail = lambda: pytest.fail("a ranker trained without this input must not compute it")  # noqa: E731
    never = {AGE_NAME: fail, CATEGORY_NAME: fail}
    assert plain.extras == () and x.shape == (4, 2) and for_ranker(plain, x, never).tolist() == x.tolist()
    assert plain.score(for_ranker(plain, x, never)).shape == (4,)
    ages, shares = np.arange(4.0).reshape(4, 1), np.full((4, 1), 0.5)
    both = ListRanker(4, [4], (CATEGORY_NAME, AGE_NAME))
    rows = for_ranker(both, x, {AGE_NAME: lambda: ages, CATEGORY_NAME: lambda: shares})
    assert rows[:, 2].tolist() == [0.5] * 4 and rows[:, 3].tolist() == ages.ravel().tolist()  # in the ranker's order
    with pytest.raises(ValueError, match="cannot compute"):
        for_ranker(both, x, {AGE_NAME: lambda: ages})  # e.g. a version whose categories file is missing
    with pytest.raises(ValueError, match="retrain"):
        for_ranker(plain, np.ones((4, 5), np.float32), never)
    assert ListRanker.load(both.save(tmp_path)).extras == (CATEGORY_NAME, AGE_NAME)
    # a ranker saved before the names were recorded: one extra column could only be the item age
    buffer = io.BytesIO()
    torch.save({"n_in": 3, "hidden": [4], "state": ListRanker(3, [4]).state_dict()}, buffer)
    (tmp_path / "old.pt").write_bytes(buffer.getvalue())
    legacy = ListRanker.load(tmp_path / "old.pt")
    assert legacy.extras is None and for_ranker(legacy, x, {AGE_NAME: lambda: ages})[:, 2].tolist() == ages.ravel().tolist()
    trained = fit_ranker(RankerSettings(epochs=1, item_age=True, category_affinity=True), np.ones((12, 4), np.float32),
                         np.zeros(12, np.float32), group=6)
    assert trained.extras == (AGE_NAME, CATEGORY_NAME)


def test_a_half_life_makes_the_ranker_follow_the_newer_lists():
    """Old lists reward feature 0, new ones feature 1 (taste drift): weighted by age, the ranker
    goes with the new; unweighted, with the majority (the old)."""
    rng = np.random.default_rng(3)
    old, new, group = 600, 200, 5
    x = rng.normal(size=((old + new) * group, 2)).astype(np.float32)
    x[:old * group:group] += [3.0, -3.0]  # then, what was taken was high on 0 and low on 1
    x[old * group::group] += [-3.0, 3.0]  # now the reverse
    ages = np.concatenate([np.full(old, 60.0), np.zeros(new)])
    offsets = np.zeros(len(x), np.float32)
    probe = np.array([[3.0, -3.0], [-3.0, 3.0]], np.float32)  # the old taste / the new
    flat = fit_ranker(RankerSettings(epochs=10), x, offsets, group, age_days=ages)
    recent = fit_ranker(RankerSettings(epochs=10, half_life_days=10.0), x, offsets, group, age_days=ages)
    assert flat.score(probe)[0] > flat.score(probe)[1]
    assert recent.score(probe)[1] > recent.score(probe)[0]
