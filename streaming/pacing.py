"""Pacing for replays and load generation: event-time speed-up and/or a max rate."""

from __future__ import annotations

import time


class Pacer:
    """Sleeps just enough so that event ``i`` is not sent before its scheduled wall time.

    The schedule is the later of ``(t_i - t_0) / speedup`` (event-time compression) and
    ``i / max_rate``; with neither set, it never sleeps.
    """

    def __init__(self, speedup: float | None = None, max_rate: float | None = None) -> None:
        if speedup is not None and speedup <= 0:
            raise ValueError("speedup must be > 0 (e.g. 3600 replays one hour per second)")
        if max_rate is not None and max_rate <= 0:
            raise ValueError("max_rate must be > 0 events/s")
        self.speedup = speedup
        self.max_rate = max_rate
        self._start: float | None = None
        self._t0: int | None = None
        self._count = 0

    def wait(self, event_time_ms: int | None = None) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start, self._t0 = now, event_time_ms
        due = 0.0
        if self.speedup is not None and event_time_ms is not None and self._t0 is not None:
            due = (event_time_ms - self._t0) / 1000.0 / self.speedup
        if self.max_rate is not None:
            due = max(due, self._count / self.max_rate)
        self._count += 1
        ahead = self._start + due - now
        if ahead > 0.001:
            time.sleep(ahead)
