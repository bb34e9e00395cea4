"""A callable run every few seconds in a daemon thread, outliving its own errors.

Serving keeps two such loops (the registry watcher, the item-feature snapshotter); both must
survive a bad poll (Redis busy, a half-written model) and report it, and stop promptly.

>>> import time
>>> calls, errors = [], []
>>> def poll():
...     calls.append(1)
...     if len(calls) == 1:
...         raise RuntimeError("first poll fails")
>>> loop = Periodic("demo", poll, interval_s=0.01, on_error=errors.append)
>>> loop.start()
>>> while len(calls) < 3:
...     time.sleep(0.01)
>>> loop.stop()
>>> [str(e) for e in errors]
['first poll fails']
"""

from __future__ import annotations

import threading
from typing import Callable


class Periodic:
    """Call ``fn`` now and then every ``interval_s`` until :meth:`stop`; its exceptions go to
    ``on_error`` and the loop goes on."""

    def __init__(self, name: str, fn: Callable[[], object], interval_s: float,
                 on_error: Callable[[Exception], None]) -> None:
        self.name = name
        self.fn = fn
        self.interval_s = interval_s
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.fn()
            except Exception as e:  # noqa: BLE001 - the loop must outlive one bad call; on_error reports it
                self.on_error(e)
            self._stop.wait(self.interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
