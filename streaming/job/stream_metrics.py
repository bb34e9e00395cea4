"""Job metrics as small JSON files, one per function instance, read by `recsys stream status`.

Flink's own metric system (and its reporters) is what a cluster should scrape; these files are
the zero-setup view for the local mini-cluster: events in, late, DLQ, write batches, offsets.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from infra.settings import Settings


def metrics_dir(settings: "Settings") -> Path:
    """Where the stream job's function instances write their counters."""
    return settings.paths.run_dir / "stream-metrics"


def attribution_metrics_dir(settings: "Settings") -> Path:
    """Where the attribution job writes its counters (apart from the feature job's)."""
    return settings.paths.run_dir / "attribution-metrics"


class MetricsFile:
    """Counters of one function instance, written atomically at most every ``every_s``."""

    def __init__(self, directory: Path, name: str, every_s: float = 1.0) -> None:
        """Counters continue from the file's values: a job resumed from a checkpoint keeps its
        totals (records re-read after a crash count again in ``events_in``)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.json"
        self.every_s = every_s
        self.counters: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.counters = {k: v for k, v in json.loads(self.path.read_text()).items() if k != "updated_at"}
            except ValueError:
                self.counters = {}
        self._last = 0.0

    def inc(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def set(self, name: str, value: Any) -> None:
        self.counters[name] = value

    def maybe_write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last >= self.every_s:
            self._last = now
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.counters, "updated_at": now}))
            os.replace(tmp, self.path)


def read_all(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def totals(directory: Path) -> dict[str, Any]:
    """The job's counters: :func:`merge` over all instances' files."""
    return merge(read_all(directory).values())


def merge(instances: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum of the numeric counters over instances, except times: the newest ``updated_at`` and
    ``last_*_at``, the first other ``*_at``, the largest ``*_delay_ms``.

    >>> merge([{"events": 2, "first_batch_at": 5.0, "last_write_at": 9.0, "write_delay_ms": 40},
    ...        {"events": 3, "first_batch_at": 4.0, "last_write_at": 7.0, "write_delay_ms": 90}])
    {'events': 5, 'first_batch_at': 4.0, 'last_write_at': 9.0, 'write_delay_ms': 90}
    """
    total: dict[str, Any] = {}
    for counters in instances:
        for k, v in counters.items():
            if k == "updated_at" or (k.startswith("last_") and k.endswith("_at")):
                total[k] = max(total.get(k, 0), v)
            elif k.endswith("_at"):
                total[k] = min(total.get(k, v), v)
            elif k.endswith("_delay_ms"):
                total[k] = max(total.get(k, v), v)
            elif isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
    return total


def records_read(metrics: dict[str, Any]) -> int:
    """Records the job has read: per partition, last offset read + 1 (``offset_p<N>`` counters)."""
    return sum(int(v) + 1 for k, v in metrics.items() if k.startswith("offset_p"))
