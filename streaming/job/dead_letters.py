"""The stream job's dead letters: one DeadLetterSender, opened on the first bad record.

Most micro-batches hold none, so no producer (and no broker connection) is made until one does.
A send that fails is counted (``dlq_send_errors``), never raised: a DLQ outage must not stop
features. ``flush`` goes with each lake commit, so letters are acknowledged as often as rows land.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import Settings
    from streaming.dlq import DeadLetterSender
    from streaming.job.stream_metrics import MetricsFile


class JobDeadLetters:
    def __init__(self, settings: "Settings", metrics: "MetricsFile") -> None:
        self.settings = settings
        self.metrics = metrics
        self._sender: "DeadLetterSender | None" = None

    def __call__(self, payload: bytes, partition: int, offset: int, reason: str, detail: str) -> None:
        """Dead-letter the record at ``partition``/``offset`` (the micro_batch.DeadLetter signature)."""
        self._open().send(payload, None, reason, detail, f"{self.settings.topics.events}/{partition}/{offset}")
        self.metrics.inc("dlq")

    def flush(self) -> None:
        if self._sender is not None:
            self._sender.producer.flush()

    def _open(self) -> "DeadLetterSender":
        if self._sender is None:
            from infra import kafka_clients
            from streaming.dlq import DeadLetterSender

            def failed(letter: Any, exc: Exception) -> None:
                self.metrics.inc("dlq_send_errors")

            producer = kafka_clients.producer(self.settings, "stream-dlq", acks="all", linger_ms=20)
            self._sender = DeadLetterSender(producer, self.settings.topics.dlq, "stream", on_failure=failed)
        return self._sender


__all__ = ["JobDeadLetters"]
