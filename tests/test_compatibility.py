"""What the engine wrote before a restructuring still loads after it.

Both folders were written by the code of commit 70b0505 (before #20 moved modules):
``tests/data/registry-before-restructuring`` holds two versions, the second with a delta from the
first (the server must load them, merge the delta, read their metadata);
``tests/data/checkpoint-before-restructuring`` holds a stream job checkpoint taken after 1,200
events with every lake row still buffered in state (``make_checkpoint.py`` there wrote it), and
the records as they sat in the topic. Registries and checkpoints on users' disks look like these.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from features.model_inputs import FeatureSpec
from models.config import ModelSettings
from models.registry import ModelRegistry
from serving.hot_swap import ModelLoader

OLD_REGISTRY = Path(__file__).parent / "data" / "registry-before-restructuring"
OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint-before-restructuring"


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


@pytest.mark.timeout(400)
def test_a_stream_checkpoint_written_before_restores_after(stack_settings, tmp_path: Path) -> None:
    """The restored job goes on from the old offsets with the old states: it reads only the new
    records, lands the lake rows the old job still buffered (plain tuples then), and its features
    count every event, old and new, as a backfill over the lake does."""
    from batch.backfill import compute as backfill
    from features import names
    from features.store import apply
    from infra import kafka_clients
    from infra.services import ensure_topics
    from infra.settings import Settings
    from streaming.events import decode_event
    from streaming.job import stream_runner
    from streaming.lake import read_events
    from tests.conftest import ML100K
    from tests.feature_checks import assert_online_equals_backfill, read_online

    manifest = json.loads((OLD_CHECKPOINT / "manifest.json").read_text())
    old = manifest["settings"]
    s = Settings(data_dir=tmp_path, ml100k_path=ML100K, broker=stack_settings.broker.model_dump(),
                 redis=stack_settings.redis.model_dump(), topics=old["topics"], features=old["features"],
                 stream={**old["stream"], "lake_flush_ms": 1000})
    assert s.topics.events_partitions == manifest["partitions"]
    ensure_topics(s)
    apply(s)
    with gzip.open(OLD_CHECKPOINT / "records.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    producer = kafka_clients.producer(s, "test-compat")
    sent = [(r, producer.send(s.topics.events, key=r["key"].encode(), value=base64.b64decode(r["value"]),
                              partition=r["partition"])) for r in records]
    producer.flush()
    assert all(future.get(10).offset == r["offset"] for r, future in sent), "the topic must hold them at their old offsets"
    producer.close()
    restore_to = s.paths.checkpoint_dir / ("0" * 32) / manifest["checkpoint"]
    restore_to.mkdir(parents=True)
    with gzip.open(OLD_CHECKPOINT / "metadata.gz", "rb") as src, open(restore_to / "_metadata", "wb") as dst:
        shutil.copyfileobj(src, dst)

    _, restored_from = stream_runner.start(s)
    try:
        # records_read counts the partitions the restored job read from (offset + 1 each)
        resumed = {r["partition"] for r in records if not r["before_checkpoint"]}
        metrics = stream_runner.wait_idle(s, sum(1 for r in records if r["partition"] in resumed), timeout_s=240)
    finally:
        stream_runner.stop(s)

    assert restored_from == restore_to
    assert metrics["events_in"] == manifest["events_after"]  # resumed at the checkpointed offsets
    assert metrics["restore_rewrites"] > 0 and metrics.get("dlq", 0) == 0
    events = [decode_event(base64.b64decode(r["value"])) for r in records if r["key"] != "bad0"]
    lake = read_events(s.paths.events_table).to_pandas()
    assert len(lake) == manifest["events_before"] + manifest["events_after"]
    assert set(lake["event_id"]) == {e.event_id for e in events}
    counts = pd.Series([e.user_id for e in events]).value_counts()
    online = read_online(s, names.USER_STATS, names.USER_KEY, list(counts.index))
    assert (online.loc[counts.index, "n_events"].astype(int) == counts).all()
    assert_online_equals_backfill(s, backfill(s, progress=False))
