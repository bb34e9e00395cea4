"""Model deltas on real TorchRec models: round trip, thresholds, integrity checks, architecture changes."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch

import models.delta
from models.config import ModelSettings
from models.delta import (
    DeltaError,
    apply_delta,
    compute_delta,
    embedding_keys,
    merge,
    read_delta,
    state_digest,
    write_delta,
)
from models.ranking import Batch, build_model, dense_optimizer, predict, train_step

CFG = ModelSettings(embedding_dim=8, user_buckets=200, item_buckets=100, dense_arch=[16, 8], over_arch=[16],
                    sparse_lr=0.2, dense_lr=0.05, cross_features=False)  # the delta mechanics, on plain dense inputs
N_DENSE = 3
USER_KEY = "sparse_arch.embedding_bag_collection.embedding_bags.user.weight"
ITEM_KEY = "sparse_arch.embedding_bag_collection.embedding_bags.item.weight"


def _batch(cfg: ModelSettings, seed: int, n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    users = [f"u{int(x)}" for x in torch.randint(0, 40, (n,), generator=g)]
    items = [f"i{int(x)}" for x in torch.randint(0, 30, (n,), generator=g)]
    recent = [[f"i{int(x)}" for x in torch.randint(0, 30, (k % 3,), generator=g)] for k in range(n)]
    return Batch.build(cfg, users, items, recent, torch.randn(n, N_DENSE, generator=g),
                       (torch.rand(n, generator=g) < 0.5).float())


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trained(cfg: ModelSettings, base_state: dict[str, torch.Tensor] | None, batches: list[Batch]) -> torch.nn.Module:
    """A model starting from ``base_state`` (a fresh build_model, so the in-backward optimizer is wired),
    trained one step per batch."""
    model = build_model(cfg, N_DENSE)
    if base_state is not None:
        model.load_state_dict(base_state)
    opt = dense_optimizer(model, cfg)
    for b in batches:
        train_step(model, opt, b)
    return model


def _model_from(cfg: ModelSettings, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(cfg, N_DENSE)
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def setup() -> dict:
    base_model = build_model(CFG, N_DENSE)
    base = _snapshot(base_model)
    batches = [_batch(CFG, s) for s in range(3)]
    new_model = _trained(CFG, base, batches)
    return {"base": base, "new_model": new_model, "new": _snapshot(new_model), "batches": batches}


@pytest.fixture
def published(setup: dict, tmp_path: Path) -> tuple[Path, dict]:
    directory = tmp_path / "v2"
    manifest = write_delta(directory, compute_delta(setup["base"], setup["new"]), setup["base"], "v1", "v2")
    return directory, manifest


def _touched(batches: list[Batch]) -> dict[str, set[int]]:
    users: set[int] = set()
    items: set[int] = set()
    for b in batches:
        users |= set(b.sparse["user_id"].values().tolist())
        items |= set(b.sparse["item_id"].values().tolist()) | set(b.sparse["recent_items"].values().tolist())
    return {USER_KEY: users, ITEM_KEY: items}


def test_module_doctests() -> None:
    result = doctest.testmod(models.delta)
    assert result.attempted > 0 and result.failed == 0


def test_embedding_keys_are_the_two_tables(setup: dict) -> None:
    assert embedding_keys(setup["base"]) == sorted([USER_KEY, ITEM_KEY])


def test_round_trip_predicts_like_the_new_model_and_ships_only_touched_rows(setup: dict, published) -> None:
    directory, manifest = published
    base, base_digest = setup["base"], state_digest(setup["base"])
    manifest_on_disk, tensors = read_delta(directory)
    assert manifest_on_disk == manifest

    touched = _touched(setup["batches"])
    for key, rows in touched.items():
        assert tensors[key + ".rows"].tolist() == sorted(rows)
        assert tensors[key + ".rows"].dtype == torch.int64
        assert manifest["tables"][key]["rows"] == len(rows)
    dense = sorted(set(base) - {USER_KEY, ITEM_KEY})
    assert manifest["dense_keys"] == dense
    assert set(tensors) == {USER_KEY + ".rows", USER_KEY + ".values", ITEM_KEY + ".rows", ITEM_KEY + ".values", *dense}

    merged = merge(directory, base, "v1")
    assert state_digest(merged) == state_digest(setup["new"]) == manifest["merged_digest"]
    assert state_digest(base) == base_digest  # base untouched
    served = _model_from(CFG, merged)
    probe = [*setup["batches"], _batch(CFG, 99, n=32)]
    for b in probe:
        torch.testing.assert_close(predict(served, b), predict(setup["new_model"], b), atol=1e-6, rtol=0)


def test_manifest_fields(setup: dict, published) -> None:
    directory, manifest = published
    assert manifest["format"] == "recsys-delta/1"
    assert (manifest["base_version"], manifest["target_version"]) == ("v1", "v2")
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["threshold"] == 0.0
    assert manifest["tables"][USER_KEY]["total_rows"] == CFG.user_buckets
    assert manifest["tables"][ITEM_KEY]["total_rows"] == CFG.item_buckets
    assert manifest["tables"][ITEM_KEY]["dim"] == CFG.embedding_dim
    data = directory / "delta.safetensors"
    assert manifest["file"]["name"] == "delta.safetensors" and manifest["file"]["bytes"] == data.stat().st_size
    assert manifest["base_digest"] == state_digest(setup["base"])
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in directory.iterdir()) == ["delta.safetensors", "manifest.json"]  # no temp files left


def test_threshold_drops_rows_that_moved_less(setup: dict, tmp_path: Path) -> None:
    base, new = setup["base"], setup["new"]
    moved = (new[ITEM_KEY] - base[ITEM_KEY]).abs().amax(dim=1)
    changed = moved[moved > 0]
    threshold = float(changed.median())
    delta = compute_delta(base, new, threshold=threshold)
    kept = delta.tensors[ITEM_KEY + ".rows"]
    assert kept.tolist() == (moved > threshold).nonzero().flatten().tolist()
    assert 0 < kept.numel() < changed.numel()
    assert delta.row_counts[ITEM_KEY] == kept.numel() and delta.threshold == threshold

    manifest = write_delta(tmp_path / "d", delta, base, "v1", "v2")
    assert manifest["threshold"] == threshold
    merged = merge(tmp_path / "d", base, "v1")
    small = (moved > 0) & (moved <= threshold)
    assert torch.equal(merged[ITEM_KEY][small], base[ITEM_KEY][small])  # dropped rows stay at the base
    assert torch.equal(merged[ITEM_KEY][moved > threshold], new[ITEM_KEY][moved > threshold])
    for k in delta.dense_keys:
        assert torch.equal(merged[k], new[k])  # dense weights always ship in full


def test_unchanged_model_gives_empty_tables(setup: dict) -> None:
    delta = compute_delta(setup["base"], setup["base"])
    assert delta.row_counts == {USER_KEY: 0, ITEM_KEY: 0}
    assert state_digest(apply_delta(setup["base"], delta.tensors)) == state_digest(setup["base"])


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_file_is_refused(setup: dict, published) -> None:
    directory, _ = published
    data = directory / "delta.safetensors"
    _flip_byte(data, data.stat().st_size // 2)
    with pytest.raises(DeltaError, match=r"sha256 .*corrupted copy.*re-publish it with `recsys retrain` or load the full version"):
        merge(directory, setup["base"], "v1")


def test_truncated_file_is_refused(setup: dict, published) -> None:
    directory, manifest = published
    data = directory / "delta.safetensors"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(DeltaError, match=rf"delta.safetensors is 100 bytes, manifest says {manifest['file']['bytes']} \(truncated copy\?\)"):
        read_delta(directory)


def test_missing_manifest_means_unfinished_publish(setup: dict, published) -> None:
    directory, _ = published
    (directory / "manifest.json").unlink()
    with pytest.raises(DeltaError, match=r"no manifest.json \(unfinished or interrupted publish\?\)"):
        merge(directory, setup["base"], "v1")
    with pytest.raises(DeltaError, match="no manifest.json"):
        read_delta(directory.parent / "never-written")


def test_bad_manifests_are_refused(published) -> None:
    directory, manifest = published
    path = directory / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(DeltaError, match="manifest.json is unreadable"):
        read_delta(directory)
    path.write_text(json.dumps({**manifest, "format": "recsys-delta/99"}))
    with pytest.raises(DeltaError, match="format 'recsys-delta/99'"):
        read_delta(directory)
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "base_digest"}))
    with pytest.raises(DeltaError, match="missing base_digest"):
        read_delta(directory)
    path.write_text(json.dumps({**manifest, "file": {**manifest["file"], "name": "../elsewhere"}}))
    with pytest.raises(DeltaError, match="names no plain data file"):
        read_delta(directory)


def test_wrong_base_version_is_refused(setup: dict, published) -> None:
    directory, _ = published
    with pytest.raises(DeltaError, match=r"is for base v1, serving v0: apply deltas in order or load the full version v2"):
        merge(directory, setup["base"], "v0")


def test_wrong_base_weights_are_refused(setup: dict, published) -> None:
    directory, _ = published
    other = _snapshot(_trained(CFG, setup["base"], [_batch(CFG, 7)]))
    digest = state_digest(other)
    with pytest.raises(DeltaError, match=r"differ from the ones it was computed against .*load the full version v2"):
        merge(directory, other, "v1")
    assert state_digest(other) == digest


def test_merged_digest_mismatch_is_refused(setup: dict, published) -> None:
    directory, manifest = published
    (directory / "manifest.json").write_text(json.dumps({**manifest, "merged_digest": "0" * 64}))
    with pytest.raises(DeltaError, match="merged_digest"):
        merge(directory, setup["base"], "v1")


def test_republishing_over_an_old_delta(setup: dict, published) -> None:
    directory, first = published
    second = write_delta(directory, compute_delta(setup["base"], setup["base"]), setup["base"], "v1", "v2b")
    assert second["file"]["sha256"] != first["file"]["sha256"]
    assert state_digest(merge(directory, setup["base"], "v1")) == state_digest(setup["base"])


def test_base_state_is_never_modified(setup: dict, tmp_path: Path) -> None:
    base = setup["base"]
    before = state_digest(base)
    delta = compute_delta(base, setup["new"])
    merged = apply_delta(base, delta.tensors)
    write_delta(tmp_path / "d", delta, base, "v1", "v2")
    merge(tmp_path / "d", base, "v1")
    merged[ITEM_KEY].add_(1.0)  # the result shares no memory with the base
    assert state_digest(base) == before


def test_apply_delta_validates(setup: dict) -> None:
    base = setup["base"]
    good = compute_delta(base, setup["new"]).tensors

    def broken(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = dict(good)
        for k, v in changes.items():
            key = {"rows": ITEM_KEY + ".rows", "values": ITEM_KEY + ".values", "dense": "over_arch.model.1.bias"}[k]
            if v is None:
                del out[key]
            else:
                out[key] = v
        return out

    rows, values = good[ITEM_KEY + ".rows"], good[ITEM_KEY + ".values"]
    with pytest.raises(DeltaError, match=r"missing \['sparse_arch.*item.weight.rows'\]"):
        apply_delta(base, broken(rows=None))
    with pytest.raises(DeltaError, match="int64 row indices"):
        apply_delta(base, broken(rows=rows.to(torch.int32)))
    with pytest.raises(DeltaError, match=r"has row 100, the table has rows 0..99"):
        apply_delta(base, broken(rows=torch.cat([rows[:-1], torch.tensor([CFG.item_buckets])])))
    with pytest.raises(DeltaError, match="has row -1"):
        apply_delta(base, broken(rows=torch.cat([torch.tensor([-1]), rows[1:]])))
    with pytest.raises(DeltaError, match="not strictly ascending"):
        apply_delta(base, broken(rows=rows.flip(0)))
    with pytest.raises(DeltaError, match=r"values is float64"):
        apply_delta(base, broken(values=values.double()))
    with pytest.raises(DeltaError, match=r"values is float32\[\d+, 7\]"):
        apply_delta(base, broken(values=values[:, :7]))
    with pytest.raises(DeltaError, match=r"over_arch.model.1.bias is float32\[2\], the model has float32\[1\]"):
        apply_delta(base, broken(dense=torch.zeros(2)))


def test_architecture_change_is_refused(setup: dict, tmp_path: Path) -> None:
    wider = ModelSettings(**{**CFG.model_dump(), "embedding_dim": 16, "dense_arch": [16, 16]})
    other = _snapshot(build_model(wider, N_DENSE))
    with pytest.raises(DeltaError, match=r"model architecture changed .*item.weight is float32\[100, 8\] in the base, "
                                         r"float32\[100, 16\] in the new model.*publish a full version instead"):
        compute_delta(setup["base"], other)
    with pytest.raises(DeltaError, match="keys only in the new model: extra"):
        compute_delta(setup["base"], {**setup["base"], "extra": torch.zeros(1)})
    # a delta published for the old architecture can't be merged into the new one either
    directory = tmp_path / "d"
    write_delta(directory, compute_delta(setup["base"], setup["new"]), setup["base"], "v1", "v2")
    with pytest.raises(DeltaError):
        merge(directory, other, "v1")


def test_write_refuses_a_delta_that_does_not_fit_its_base(setup: dict, tmp_path: Path) -> None:
    delta = compute_delta(setup["base"], setup["new"])
    wider = ModelSettings(**{**CFG.model_dump(), "item_buckets": 50})
    with pytest.raises(DeltaError, match="v1 -> v2 doesn't apply to its base"):
        write_delta(tmp_path / "d", delta, _snapshot(build_model(wider, N_DENSE)), "v1", "v2")
    assert not (tmp_path / "d" / "manifest.json").exists()
