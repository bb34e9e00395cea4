"""What the engine wrote before a restructuring still loads after it.

``tests/data/registry-before-restructuring`` was written by the code of commit 70b0505 (before
#20 moved modules): two versions, the second with a delta from the first. Registries on users'
disks look like this; the server must load them, merge the delta, and read their metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from features.model_inputs import FeatureSpec
from models.config import ModelSettings
from models.registry import ModelRegistry
from serving.hot_swap import ModelLoader

OLD_REGISTRY = Path(__file__).parent / "data" / "registry-before-restructuring"


def test_a_registry_written_before_loads_and_its_delta_merges(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(OLD_REGISTRY, root)
    registry = ModelRegistry(root)
    assert registry.versions() == ["v0001", "v0002"] and registry.served() == "v0001"
    meta = registry.meta("v0002")
    assert meta.base_version == "v0001" and meta.table_version == 3
    assert meta.model_settings == ModelSettings(embedding_dim=8, user_buckets=64, item_buckets=48,
                                                dense_arch=[16, 8], over_arch=[16, 8])
    spec = FeatureSpec.from_dict(meta["features"])
    loader = ModelLoader(registry, lambda: spec)
    served = loader.full("v0001")
    chain = loader.delta_chain("v0001", "v0002")
    assert chain == [("v0002", "v0001")]
    merged = loader.via_deltas(served, chain)
    assert merged.version == "v0002" and merged.lineage.loaded_from == "delta"
    assert merged.lineage.deltas == ("v0002/delta-from-v0001",)
    full = loader.full("v0002")
    assert merged.state.keys() == full.state.keys()
    assert all(torch.equal(merged.state[k], full.state[k]) for k in full.state)
    assert list(full.catalogue[:3]) == ["i0", "i1", "i2"]
