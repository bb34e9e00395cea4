"""Write this folder's Flink checkpoint with the code of another commit (run from that commit's tree).

    git worktree add /tmp/old <commit> && cd /tmp/old
    <venv>/bin/python <this repo>/tests/data/checkpoint-before-restructuring/make_checkpoint.py <this folder>

It starts a broker and Redis on free loopback ports, produces ``EVENTS`` MovieLens events and one
malformed record, lets that commit's stream job read them all and checkpoint, kills the job and
keeps the newest checkpoint's ``_metadata`` (gzipped) (state inlined: ``state.storage.fs.memory-threshold``),
the records exactly as they sit in the topic (partition, offset, key, value) and a manifest with
the settings the restoring test must use. The lake flush is held back, so the checkpoint still
buffers every lake row: the restore has to write them from state (rows of the old code were plain
tuples). Runs with the code before and after the restructuring (the module paths differ).
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from infra import services  # noqa: E402
from infra.settings import Settings  # noqa: E402
from streaming.producer import EventProducer  # noqa: E402
from streaming.replay import load_events  # noqa: E402

try:  # after the restructuring
    from infra.services import ensure_topics
    from streaming.job import stream_runner
    from streaming.job.stream_metrics import metrics_dir, read_all, merge, records_read
except ImportError:  # before it (commit 70b0505)
    from streaming import stream_runner
    from streaming.topics import ensure_topics
    from streaming.feature_functions import metrics_dir
    from streaming.stream_metrics import read_all, merge, records_read

EVENTS = 1200  # read before the checkpoint
EXTRA = 300  # produced by the test after restoring
MALFORMED = b"not json {"
OVERRIDES = {  # the manifest's settings: the restoring job must see the same topics, group and epoch
    "topics": {"events": "compat-events", "dlq": "compat-dlq"},
    "features": {"project": "compat"},
    "stream": {"group_id": "compat", "topic_epoch": "compat-v1", "checkpoint_interval_ms": 1000},
}
HOLD_LAKE = {"lake_flush_ms": 3_600_000, "lake_flush_rows": 1_000_000,
             "flink_config": {"state.storage.fs.memory-threshold": "1mb"}}


def main(out: Path, ml100k: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="recsys-compat-"))
    s = Settings(data_dir=work, ml100k_path=ml100k, broker={"port": services.free_port()},
                 redis={"port": services.free_port()}, topics=OVERRIDES["topics"], features=OVERRIDES["features"],
                 stream={**OVERRIDES["stream"], **HOLD_LAKE})
    services.up(s)
    try:
        ensure_topics(s)
        from features.store import apply

        apply(s)
        events = load_events(ml100k).events[: EVENTS + EXTRA]
        from kafka import KafkaProducer

        raw = KafkaProducer(bootstrap_servers=s.broker.bootstrap)
        raw.send(s.topics.events, key=b"bad0", value=MALFORMED).get(30)
        raw.close()
        with EventProducer(s) as producer:
            producer.send_many(events[:EVENTS])
            producer.flush()
        stream_runner.start(s, fresh=True)
        while records_read(merge(read_all(metrics_dir(s)).values())) < EVENTS + 1:
            time.sleep(0.5)
        read_at = time.time()
        while True:  # a checkpoint completed after everything was read
            chk = stream_runner.latest_checkpoint(s)
            if chk is not None and (chk / "_metadata").stat().st_mtime > read_at + 2:
                break
            time.sleep(0.5)
        stream_runner.stop(s, kill=True)
        if any(p.is_file() for p in chk.iterdir() if p.name != "_metadata"):
            raise SystemExit(f"{chk} has state files beside _metadata: lower EVENTS so the state inlines")
        records = _topic_records(s)
        with EventProducer(s) as producer:  # the extra events, only to record where they land
            producer.send_many(events[EVENTS:])
            producer.flush()
        records_after = _topic_records(s)
    finally:
        stream_runner.stop(s, kill=True)
        services.down(s)
    out.mkdir(parents=True, exist_ok=True)
    with open(chk / "_metadata", "rb") as src, gzip.open(out / "metadata.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    with gzip.open(out / "records.jsonl.gz", "wt") as f:
        for r in records_after:
            f.write(json.dumps({**r, "before_checkpoint": (r["partition"], r["offset"]) in
                                {(x["partition"], x["offset"]) for x in records}}) + "\n")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (out / "manifest.json").write_text(json.dumps({
        "commit": commit, "checkpoint": chk.name, "events_before": EVENTS, "events_after": EXTRA,
        "malformed": 1, "partitions": s.topics.events_partitions, "settings": OVERRIDES,
    }, indent=1) + "\n")
    print(f"wrote {out} from commit {commit}: {chk.name}, {(chk / '_metadata').stat().st_size} bytes")
    shutil.rmtree(work, ignore_errors=True)


def _topic_records(s: Settings) -> list[dict]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    parts = [TopicPartition(s.topics.events, p) for p in range(s.topics.events_partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [{"partition": m.partition, "offset": m.offset, "key": m.key.decode(),
            "value": base64.b64encode(m.value).decode()} for m in consumer]
    consumer.close()
    return sorted(out, key=lambda r: (r["partition"], r["offset"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/ml-100k/u.data").resolve())
