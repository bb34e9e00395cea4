"""Replay of real MovieLens 100k through the producer: every rating arrives, in event-time order."""

from collections import Counter
from pathlib import Path

import orjson
import pytest

from infra.settings import Settings
from streaming.events import Event, decode_event
from streaming.ingest import send_events
from streaming.pacing import Pacer
from streaming.producer import EventProducer
from streaming.replay import load_events, parse_columns
from streaming.vocabulary import parse_event_types
from streaming.topics import scan_topic


def _file_rows(path: Path) -> Counter:
    rows = Counter()
    for line in path.read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        rows[(user, item, float(rating), int(ts) * 1000)] += 1
    return rows


def test_replay_ml100k_delivers_all_events_in_time_order(settings: Settings, ml100k_path: Path) -> None:
    loaded = load_events(ml100k_path)
    assert len(loaded.events) == 100_000 and not loaded.rejected
    times = [e.event_time for e in loaded.events]
    assert times == sorted(times)  # sent in event-time order

    with EventProducer(settings) as producer:
        result = send_events(producer, loaded.events, show_progress=False)
    assert result.report.acked == 100_000 and not result.report.failed

    received: list[Event] = []
    per_partition_times: dict[int, list[int]] = {}

    def visit(record) -> None:  # type: ignore[no-untyped-def]
        event = decode_event(record.value)
        received.append(event)
        per_partition_times.setdefault(record.partition, []).append(event.event_time)

    scan = scan_topic(settings, settings.topics.events, visit=visit)
    assert scan.records == 100_000
    assert len(per_partition_times) == settings.topics.events_partitions
    for part_times in per_partition_times.values():
        assert part_times == sorted(part_times)
    assert len({e.event_id for e in received}) == 100_000
    got = Counter((e.user_id, e.item_id, e.value, e.event_time) for e in received)
    assert got == _file_rows(ml100k_path)
    assert all(e.event_type == "rating" for e in received)
    assert scan_topic(settings, settings.topics.dlq).records == 0


def test_a_file_larger_than_the_memory_bound_replays_in_order_without_holding_it_whole(
        tmp_path: Path, settings: Settings, ml100k_path: Path, capsys) -> None:
    """u.data is not in time order; with room for 400 events, 5,000 of its rows are sorted in
    runs on disk and merged: the topic gets every event in time order (ties in file order), no
    more than 400 were held, and the runs are gone afterwards."""
    from infra.cli import build_parser

    log = tmp_path / "u.data"
    log.write_text("".join(ml100k_path.read_text().splitlines(keepends=True)[:5000]))
    loaded = load_events(log, max_in_memory=400, spill_dir=tmp_path / "spill")
    with loaded:
        assert not loaded.events.was_in_order and loaded.events.peak_buffered == 400
        ordered = [(e.event_time, int(e.event_id.split(":")[1])) for e in loaded.events]
        assert loaded.events.runs == 13  # 12 full runs and the rest
    assert ordered == sorted(ordered) and len(ordered) == 5000  # by time, then by line
    assert not any((tmp_path / "spill").iterdir())  # the runs are removed

    args = build_parser().parse_args(["replay", str(log), "--memory-events", "400", "--quiet"])
    assert args.run(settings, args) == 0
    assert "sorted on disk in 13 runs of up to 400 events" in " ".join(capsys.readouterr().out.split())
    per_partition: dict[int, list[int]] = {}
    scan = scan_topic(settings, settings.topics.events,
                      visit=lambda r: per_partition.setdefault(r.partition, []).append(decode_event(r.value).event_time))
    assert scan.records == 5000
    assert all(times == sorted(times) for times in per_partition.values())
    assert not any(settings.paths.spill_dir.iterdir())


def test_csv_with_header_mapping_and_bad_rows(tmp_path: Path, settings: Settings) -> None:
    csv_file = tmp_path / "ratings.csv"
    csv_file.write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,300\n"
        "2,20,5.0,100\n"
        "3,30,3.5,not-a-time\n"
        "4,40,2.0,200\n"
    )
    loaded = load_events(csv_file, columns=parse_columns("user_id=userId,item_id=movieId,value=rating,event_time=timestamp"))
    assert [e.item_id for e in loaded.events] == ["20", "40", "10"]
    assert len(loaded.rejected) == 1 and loaded.rejected[0][1].reason == "wrong_type"
    with EventProducer(settings) as producer:
        result = send_events(producer, loaded.events, show_progress=False, rejected=[r for r, _ in loaded.rejected])
    assert result.report.acked == 3 and result.report.rejected == 1
    assert scan_topic(settings, settings.topics.dlq).reasons == Counter({"wrong_type": 1})


def test_bad_column_mapping_says_what_to_do(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="Fix the --columns mapping"):
        load_events(f, columns=parse_columns("user_id=userId,item_id=b,event_time=a"))
    with pytest.raises(ValueError, match="must map event_time"):
        parse_columns("user_id=a,item_id=b")


def test_pacer_speedup_spaces_events_by_event_time() -> None:
    import time

    pacer = Pacer(speedup=1000.0)  # 1 s of event time per ms
    start = time.monotonic()
    for t in (0, 100_000, 200_000):  # 200 s of event time -> 0.2 s wall
        pacer.wait(t)
    assert 0.18 <= time.monotonic() - start < 1.0
    with pytest.raises(ValueError, match="speedup must be > 0"):
        Pacer(speedup=0)


def test_pacer_max_rate_caps_throughput() -> None:
    import time

    pacer = Pacer(max_rate=100.0)
    start = time.monotonic()
    for _ in range(21):
        pacer.wait()
    assert time.monotonic() - start >= 0.19


def test_a_log_in_another_vocabulary_is_refused_with_the_values_and_the_counts(tmp_path: Path, capsys) -> None:
    """The common e-commerce layout (user,item,category,behavior,timestamp; pv/cart/fav/buy):
    until its behaviours are mapped, the error names them, counts them and lists what is accepted."""
    from infra import cli

    log = tmp_path / "behaviour.csv"
    rows = [f"{u},{i},7,{b},{1_511_000_000 + n}" for n, (u, i, b) in
            enumerate([(1, 10, "pv"), (1, 11, "pv"), (2, 10, "cart"), (2, 12, "buy"), (3, 11, "pv")])]
    log.write_text("user,item,category,behavior,timestamp\n" + "\n".join(rows) + "\n")
    columns = "user_id=user,item_id=item,event_type=behavior,event_time=timestamp"
    loaded = load_events(log, columns=parse_columns(columns))
    assert loaded.events == [] and len(loaded.rejected) == 5
    summary = loaded.rejection_summary()
    assert summary.startswith("5 bad rows: 5 unknown_event_type (event_type 'pv' x3, 'cart', 'buy'")
    assert "'view'" in summary and "'purchase'" in summary  # what is accepted
    assert cli.main(["evaluate", str(log), "--columns", columns, "--quiet"]) == 2
    assert "'pv' x3" in " ".join(capsys.readouterr().out.split())  # (rich wraps long lines)
    assert "--event-types pv=<type>" in summary  # and how to map it

    mapped = load_events(log, columns=parse_columns(columns),
                         aliases=parse_event_types("pv=view,cart=add_to_cart,buy=purchase,fav=like"))
    assert not mapped.rejected
    assert [e.event_type.value for e in mapped.events] == ["view", "view", "add_to_cart", "purchase", "view"]


def test_the_producer_puts_the_engines_type_on_the_topic(settings: Settings) -> None:
    """A backend that sends its own names (events.aliases) never puts them on the topic: every
    reader of it (the stream job, the learner, the lake) sees the engine's types."""
    settings = settings.model_copy(update={"events": settings.events.model_validate({"aliases": {"pv": "view", "buy": "purchase"}})})
    sent = [{"event_id": f"e{n}", "user_id": "u", "item_id": str(n), "event_type": t, "event_time": 1_000 + n}
            for n, t in enumerate(["pv", "buy", "click", "teleport"])]
    with EventProducer(settings) as producer:
        problems = [producer.send_or_reason(e) for e in sent]
        producer.flush(timeout=10)
    assert [p.reason if p else None for p in problems] == [None, None, None, "unknown_event_type"]
    types: list[str] = []
    scan_topic(settings, settings.topics.events, visit=lambda r: types.append(orjson.loads(r.value)["event_type"]))
    assert sorted(types) == ["click", "purchase", "view"]
    assert scan_topic(settings, settings.topics.dlq).records == 1


def test_the_same_log_reads_alike_in_every_layout(tmp_path: Path) -> None:
    """Headerless CSV by column position (gzipped), JSON lines with ISO times, Parquet with a
    timestamp column and millisecond epochs: the same events; the time unit is guessed and said."""
    import gzip
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [("1", "10", "pv", 1_511_544_070), ("1", "11", "buy", 1_511_544_071), ("2", "10", "cart", 1_511_544_075)]
    aliases = parse_event_types("pv=view,buy=purchase,cart=add_to_cart")
    csv_gz = tmp_path / "behaviour.csv.gz"
    with gzip.open(csv_gz, "wt") as fh:
        fh.write("".join(f"{u},{i},4000,{b},{t}\n" for u, i, b, t in raw) + "1,12\n")  # the last row is short
    jsonl = tmp_path / "behaviour.jsonl"
    iso = [datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None).isoformat() for *_, t in raw]
    jsonl.write_text("".join(orjson.dumps({"uid": u, "sku": i, "act": b, "ts": s}).decode() + "\n"
                             for (u, i, b, _), s in zip(raw, iso)) + "{not json\n")
    parquet = tmp_path / "behaviour.parquet"
    pq.write_table(pa.table({"user_id": [u for u, *_ in raw], "item_id": [i for _, i, *_ in raw],
                             "event_type": [b for *_, b, _ in raw], "event_time": [t * 1000 for *_, t in raw]}), parquet)
    stamped = tmp_path / "stamped.parquet"
    pq.write_table(pa.table({"user": [u for u, *_ in raw], "item": [i for _, i, *_ in raw], "kind": [b for *_, b, _ in raw],
                             "at": pa.array([datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None) for *_, t in raw],
                                            pa.timestamp("ms"))}), stamped)

    loads = {
        "csv.gz": load_events(csv_gz, columns=parse_columns("user_id=0,item_id=1,event_type=3,event_time=4"), aliases=aliases),
        "jsonl": load_events(jsonl, columns=parse_columns("user_id=uid,item_id=sku,event_type=act,event_time=ts"), aliases=aliases),
        "parquet": load_events(parquet, aliases=aliases),
        "stamped": load_events(stamped, columns=parse_columns("user_id=user,item_id=item,event_type=kind,event_time=at"), aliases=aliases),
    }
    expected = [("1", "10", "view", 1_511_544_070_000), ("1", "11", "purchase", 1_511_544_071_000), ("2", "10", "add_to_cart", 1_511_544_075_000)]
    for name, loaded in loads.items():
        assert [(e.user_id, e.item_id, e.event_type.value, e.event_time) for e in loaded.events] == expected, name
    assert [r.reason for _, r in loads["csv.gz"].rejected] == ["bad_row"]  # kept for the DLQ, not dropped
    assert [r.reason for _, r in loads["jsonl"].rejected] == ["bad_row"]
    assert loads["csv.gz"].time_unit == "s (guessed from 1511544070)"
    assert loads["parquet"].time_unit == "ms (guessed from 1511544070000)"
    with pytest.raises(ValueError, match="mixes header names and column numbers"):
        parse_columns("user_id=0,item_id=sku,event_time=2")
