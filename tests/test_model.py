"""The TorchRec ranking model on CPU: shapes, hashed unknown ids, row-wise sparse updates, learning."""

from __future__ import annotations

import torch

from models.config import ModelSettings
from models.ranking import Batch, build_model, dense_optimizer, item_embeddings, predict, train_step

CFG = ModelSettings(embedding_dim=8, user_buckets=50, item_buckets=40, dense_arch=[16, 8], over_arch=[16], sparse_lr=0.2, dense_lr=0.05,
                    cross_features=False)


def _batch(users, items, recent, labels=None) -> Batch:
    dense = torch.zeros(len(users), 3)
    return Batch.build(CFG, users, items, recent, dense, None if labels is None else torch.tensor(labels))


def test_forward_gives_one_probability_per_example_even_for_unknown_ids():
    model = build_model(CFG, n_dense=3)
    p = predict(model, _batch(["u1", "never-seen"], ["i1", "brand-new-item"], [["i2", "i3"], []]))
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


def test_only_touched_item_rows_change_in_a_step():
    model = build_model(CFG, n_dense=3)
    opt = dense_optimizer(model, CFG)
    before = item_embeddings(model).clone()
    batch = _batch(["u1"], ["i1"], [["i2"]], [1.0])
    train_step(model, opt, batch)
    changed = (item_embeddings(model) != before).any(dim=1).nonzero().flatten().tolist()
    touched = sorted(set(batch.sparse["item_id"].values().tolist()) | set(batch.sparse["recent_items"].values().tolist()))
    assert changed == touched


def test_learns_a_simple_preference():
    model = build_model(CFG, n_dense=3)
    opt = dense_optimizer(model, CFG)
    users = [f"u{i % 10}" for i in range(200)]
    items = [f"i{(i * 7) % 20}" for i in range(200)]
    labels = [1.0 if int(it[1:]) % 2 == 0 else 0.0 for it in items]  # even items are liked
    batch = _batch(users, items, [[] for _ in users], labels)
    first = train_step(model, opt, batch)
    for _ in range(60):
        last = train_step(model, opt, batch)
    assert last < first * 0.5
    p = predict(model, _batch(["u1", "u1"], ["i2", "i3"], [[], []]))
    assert p[0] > p[1]


def test_listwise_step_is_the_softmax_of_each_list_with_its_offsets():
    """group > 1: the loss is the cross-entropy of each list's positive, logits + offsets."""
    torch.manual_seed(0)
    model = build_model(CFG, n_dense=3)
    batch = _batch(["u1"] * 3 + ["u2"] * 3, ["i1", "i2", "i3", "i4", "i5", "i6"], [["i9"]] * 6,
                   [1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    batch.offsets = torch.tensor([0.0, -0.5, 1.0, 0.0, 0.3, 0.0])
    with torch.no_grad():
        logits = model(batch.dense, batch.sparse).squeeze(-1) + batch.offsets
    expected = torch.nn.functional.cross_entropy(logits.reshape(2, 3), torch.tensor([0, 0]))
    loss = train_step(model, dense_optimizer(model, CFG), batch, group=3)
    assert abs(loss - float(expected)) < 1e-5
    with torch.no_grad():
        after = model(batch.dense, batch.sparse).squeeze(-1) + batch.offsets
    assert torch.nn.functional.cross_entropy(after.reshape(2, 3), torch.tensor([0, 0])) < expected  # it learns
