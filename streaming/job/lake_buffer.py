"""Lake rows held in Flink state until a Delta commit is due (enough rows, or enough time).

The rows live in keyed list state, so a checkpoint covers every row not yet committed and a
restore commits them (the lake skips rows it already holds: streaming.lake's idempotent
transaction per partition). One commit writes each partition's rows in offset order. The Flink
states are passed in (anything with ``get/add/clear`` and ``value/update``), so this is tested
without Flink.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

from streaming.lake import KAFKA_OFFSET

if TYPE_CHECKING:
    from streaming.job.stream_metrics import MetricsFile
    from streaming.lake import LakeWriter


class LakeBuffer:
    def __init__(self, rows: Any, count: Any, lake: "LakeWriter", flush_rows: int, flush_ms: int,
                 metrics: "MetricsFile", on_commit: Callable[[], None] = lambda: None) -> None:
        self.rows = rows  # list state of (partition, rows)
        self.count = count  # value state: rows buffered
        self.lake = lake
        self.flush_rows = flush_rows
        self.flush_ms = flush_ms
        self.metrics = metrics
        self.on_commit = on_commit  # called after each commit
        self._due_at: dict[int, float] = {}  # key -> monotonic time its rows are due

    def add(self, key: int, partition: int, rows: Sequence[tuple]) -> int | None:
        """Buffer ``rows``; commit now if there are enough. Returns the milliseconds after which a
        timer should call :meth:`on_timer` (None: none needed, one is pending or rows were committed)."""
        if not rows:
            return None
        self.rows.add((partition, list(rows)))
        buffered = (self.count.value() or 0) + len(rows)
        self.count.update(buffered)
        if buffered >= self.flush_rows:
            self.flush(key)
        elif key not in self._due_at:
            self._due_at[key] = time.monotonic() + self.flush_ms / 1000
            return self.flush_ms
        return None

    def on_timer(self, key: int) -> bool:
        """Commit if due, or if rows came back with a restore (no due time known). True if committed."""
        due = self._due_at.get(key)
        if (due is not None and time.monotonic() >= due - 0.01) or (due is None and (self.count.value() or 0) > 0):
            self.flush(key)
            return True
        return False

    def flush(self, key: int) -> int:
        """One Delta commit of every buffered row; returns the rows written (replayed ones skipped)."""
        by_partition: dict[int, list[tuple]] = defaultdict(list)
        for partition, rows in self.rows.get() or []:
            by_partition[partition].extend(rows)
        written = 0
        if by_partition:
            for rows in by_partition.values():
                rows.sort(key=lambda r: r[KAFKA_OFFSET])  # rows restored from old checkpoints are plain tuples
            buffered = sum(len(rows) for rows in by_partition.values())
            written = self.lake.append_many(by_partition)
            self.metrics.inc("lake_rows", written)
            self.metrics.inc("lake_commits", 1 if written else 0)
            self.metrics.inc("lake_replayed_skipped", buffered - written)
        self.rows.clear()
        self.count.update(0)
        self._due_at.pop(key, None)
        self.on_commit()
        return written


__all__ = ["LakeBuffer"]
