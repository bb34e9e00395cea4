"""`recsys learn`: the streaming trainer's loop over the events topic.

The learner's position lives in the model versions it publishes, not in Kafka, so the consumer
is assigned every partition and seeks to where :meth:`OnlineLearner.start` says (its own group id
only names it to the broker). Invalid records are skipped here: the stream job already
dead-letters them with a reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from kafka import KafkaConsumer, TopicPartition

from batch.online.online_learner import OnlineLearner, PublishResult
from infra import kafka_clients
from infra.settings import Settings
from streaming.events import InvalidEvent, decode_event
from streaming.vocabulary import EventVocabulary


@dataclass
class LearnReport:
    consumed: int = 0
    trained: int = 0
    skipped_invalid: int = 0
    skipped_late: int = 0  # beyond the stream job's allowed lateness: in no feature, no training
    rebases: int = 0
    published: list[PublishResult] = field(default_factory=list)


def _consumer(settings: Settings, start: dict[int, int]) -> KafkaConsumer:
    consumer = kafka_clients.consumer(settings, settings.online.group_id, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
    topic = settings.topics.events
    parts = sorted(consumer.partitions_for_topic(topic) or [])
    if not parts:
        consumer.close()
        raise RuntimeError(f"topic {topic!r} does not exist: run `recsys up` to create it")
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    return consumer


def run(settings: Settings, *, idle_exit_s: float | None = None, max_events: int | None = None,
        stop: Callable[[], bool] = lambda: False, on_publish: Callable[[PublishResult], None] = lambda r: None,
        learner: OnlineLearner | None = None, on_progress: Callable[[], None] = lambda: None) -> LearnReport:
    """Consume, train and publish until ``stop()``, ``max_events`` trained, or (``idle_exit_s``) no
    new event for that long; whatever was trained is published before returning (Ctrl-C too).
    ``on_progress`` runs after the start and after every batch of records."""
    learner = learner or OnlineLearner(settings)
    aliases = EventVocabulary.from_settings(settings).aliases
    report = LearnReport()
    consumer = _consumer(settings, learner.start())
    on_progress()
    idle_since = time.monotonic()
    limit = max_events if max_events is not None else float("inf")
    try:
        while not stop() and report.trained < limit:
            if learner.superseded():  # a nightly version (or a rollback) is served now: train on top of it
                consumer.close()
                consumer = _consumer(settings, learner.start())
                report.rebases += 1
                on_progress()
            batch = consumer.poll(timeout_ms=settings.online.poll_timeout_ms, max_records=2000)
            records = [(tp.partition, r) for tp, rs in sorted(batch.items(), key=lambda kv: kv[0].partition) for r in rs]
            for partition, r in records:
                if report.trained >= limit:
                    break  # the rest is re-read next time: the position only moves past trained events
                report.consumed += 1
                try:
                    event = decode_event(r.value or b"", settings.producer.max_event_bytes, aliases)
                except InvalidEvent:
                    report.skipped_invalid += 1
                    continue
                report.trained += learner.offer(partition, r.offset, event)
            if records:
                idle_since = time.monotonic()
                on_progress()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if learner.due():
                _publish(learner, report, on_publish)
    except KeyboardInterrupt:
        pass  # Ctrl-C: publish what was trained, below
    finally:
        consumer.close()
        report.skipped_late = learner.late_skipped
    _publish(learner, report, on_publish)
    return report


def _publish(learner: OnlineLearner, report: LearnReport, on_publish: Callable[[PublishResult], None]) -> None:
    result = learner.publish()
    if result is not None:
        report.published.append(result)
        on_publish(result)
