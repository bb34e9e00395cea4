"""The feature job's writes to the online store: in the job's Python process, or in a child.

The job's Python worker is its bottleneck (one core of Python per subtask), and a third of its
time went into turning states into Feast values, protos and Redis commands. With
``stream.writer_process`` (the default) a child process does that on another core while the job
is behind: the job hands it, per write, each touched entity's encoded state (a user's: the bytes
stored in Flink state anyway; an item's: with only its top co-visits, ``ItemState.online_bytes``),
and the child decodes them and writes the views with :class:`features.online_writer.OnlineWriter`.
While the job keeps up, it writes in its own process: at a trickle the hop costs more latency
than the write.

Both writers take the same calls (``stage`` an entity's state for some views, ``flush``) and
record the same metrics (``online_rows``, ``write_delay_ms``, ``last_write_at``...), the child in
its own metrics file, written after its Redis write, so "written" always means readable.

The child reads frames from its stdin (8-byte length, pickle): first the settings, then
``(oldest Kafka timestamp, rows)`` per write, and acknowledges each write on its stdout. A
thread of the job sends the frames, so the job goes on computing while the child writes, and a
new write is handed over only once the last one is acknowledged: meanwhile the staged rows
coalesce (backpressure without a queue of writes, bounded memory). The child exits when its
stdin closes: the job's normal end, and also a job process killed with -9.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the child: Feast imports torch when it can (a second of start-up), never needed here
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]

import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import threading
import time
from functools import partial
from typing import Any, BinaryIO, Callable

from features.compute import ItemState, UserState, view_values
from features.online_writer import OnlineWriter
from infra.settings import Settings, secret_env, settings_from_snapshot, settings_snapshot
from streaming.job.stream_metrics import MetricsFile

DECODERS: dict[str, Callable[[bytes], Any]] = {"user": UserState.from_bytes, "item": ItemState.from_bytes}
_HEADER = struct.Struct("<Q")
READY = b"R"
WRITTEN = b"W"  # the child's ack of each write
START_TIMEOUT_S = 120.0


def _write(writer: OnlineWriter, metrics: MetricsFile, oldest_kafka_ms: int | None) -> None:
    """Flush ``writer`` and record it (both writers' metrics, one definition)."""
    started = time.perf_counter()
    written = writer.flush()
    if oldest_kafka_ms is not None:
        # produce -> readable in the online store, for the oldest record in this write
        metrics.set("write_delay_ms", int(time.time() * 1000) - oldest_kafka_ms)
    metrics.set("last_write_at", time.time())
    metrics.inc("online_flush_s", time.perf_counter() - started)
    metrics.inc("online_rows", written)
    metrics.set("online_batches", writer.batches)


def _encode_for_child(kind: str, state: Any, cfg: Any) -> bytes:
    return state.online_bytes(cfg) if kind == "item" else state.to_bytes()


def _stage(writer: OnlineWriter, settings: Settings, views: tuple[str, ...], entity_id: str, state: Any,
           event_time_ms: int) -> None:
    for view in views:
        writer.stage(view, entity_id, partial(view_values, settings.features, view, state), event_time_ms)


class InProcessWriter:
    """Feature values computed and written in the job's own process (``stream.writer_process`` off)."""

    def __init__(self, settings: Settings, metrics: MetricsFile) -> None:
        self.settings = settings
        self.metrics = metrics
        self.online = OnlineWriter(settings)

    @property
    def pending_rows(self) -> int:
        return self.online.pending_rows

    def require(self, view: str, produced: dict[str, Any]) -> None:
        self.online.require(view, produced)

    def stage(self, kind: str, views: tuple[str, ...], entity_id: str, state: Any, encoded: bytes | None,
              event_time_ms: int) -> None:
        """``views`` of ``entity_id`` changed (``kind`` "user" or "item"); the latest stage wins.
        ``encoded``: the state's bytes if the caller has them, else they are made if a writer
        process needs them (at the write, once however often the entity was staged)."""
        _stage(self.online, self.settings, views, entity_id, state, event_time_ms)

    def due(self, max_wait_ms: int, max_rows: int) -> bool:
        return self.online.due(max_wait_ms, max_rows)

    def ms_since_write(self) -> float:
        return self.online.ms_since_write()

    def flush(self, oldest_kafka_ms: int | None, behind: bool = False) -> None:
        _write(self.online, self.metrics, oldest_kafka_ms)

    def close(self) -> None:
        if self.online.pending_rows:
            self.flush(None)


class ChildProcessWriter:
    """Feature values computed and written by a child process while the job is behind, by the
    job's own process while it keeps up (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: MetricsFile, name: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.local = OnlineWriter(settings)  # the registry check (require), and the writes while the job keeps up
        self._pending: dict[tuple[str, str], tuple[tuple[str, ...], Any, bytes, int]] = {}
        self._rows = 0
        self.last_flush = time.monotonic()
        self.log = settings.paths.log_dir / f"feature-writer-{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **secret_env(settings), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "streaming.job.feature_writer", name],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        _widen_pipe(self._proc.stdin)
        self._frames: queue.Queue[bytes | None] = queue.Queue(maxsize=1)
        self._sent = self._acked = 0
        self._failed = False
        self._sender = threading.Thread(target=self._send_frames, name="feature-writer-sender", daemon=True)
        self._sender.start()
        self._frames.put(settings_snapshot(settings).encode())  # secrets masked: they are in its environment
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Block until the child has imported, read its settings and reached Redis: a job that runs
        has a writer that writes (its start takes seconds on a busy box, longer than a short job)."""
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        if not ready or self._proc.stdout.read(1) != READY:
            if self._proc.poll() is None:
                self._proc.kill()
            raise RuntimeError(self._died())
        os.set_blocking(self._proc.stdout.fileno(), False)  # acks are counted without waiting

    def in_flight(self) -> int:
        """Writes handed over and not yet acknowledged by the child."""
        try:
            acks = os.read(self._proc.stdout.fileno(), 65536)
        except BlockingIOError:
            acks = None
        if acks == b"":  # end of file: the child is gone
            self._failed = True
        self._acked += len(acks or b"")
        return self._sent - self._acked

    @property
    def pending_rows(self) -> int:
        return self._rows

    def require(self, view: str, produced: dict[str, Any]) -> None:
        self.local.require(view, produced)

    def stage(self, kind: str, views: tuple[str, ...], entity_id: str, state: Any, encoded: bytes | None,
              event_time_ms: int) -> None:
        key = (kind, entity_id)
        previous = self._pending.get(key)
        if previous is not None:
            views = tuple(dict.fromkeys(previous[0] + views)) if previous[0] != views else views
        self._rows += len(views) - (len(previous[0]) if previous is not None else 0)
        self._pending[key] = (views, state, encoded, event_time_ms)

    def due(self, max_wait_ms: int, max_rows: int) -> bool:
        """As :meth:`OnlineWriter.due`, but not while the child is still busy with the last write
        (it has not acknowledged it): the rows staged meanwhile are written together (a hot
        entity once), so the writes keep pace with the child by themselves and no queue of
        writes builds up between the two. ``max_rows`` still bounds what waits here."""
        if self._rows >= max_rows:
            return True
        in_flight = self.in_flight()
        if self._failed:
            return True  # so that flush() raises now, with the child's log
        return self._rows > 0 and in_flight == 0 and self.ms_since_write() >= max_wait_ms

    def ms_since_write(self) -> float:
        return (time.monotonic() - self.last_flush) * 1000

    def flush(self, oldest_kafka_ms: int | None, behind: bool = True) -> None:
        """Hand the staged rows to the child when the job is ``behind`` (or earlier writes are still
        in flight, which must land first); else write them here: at a trickle, the hop to another
        process on a busy 2-core box cost more latency (p50 +50 ms) than the write itself."""
        if self._failed:
            raise RuntimeError(self._died())
        pending = self._pending
        self._pending, self._rows, self.last_flush = {}, 0, time.monotonic()
        if not behind and self.in_flight() == 0:
            for (kind, entity_id), (views, state, _, t) in pending.items():
                _stage(self.local, self.settings, views, entity_id, state, t)
            _write(self.local, self.metrics, oldest_kafka_ms)
            return
        cfg = self.settings.features
        rows = [(kind, views, entity_id, encoded or _encode_for_child(kind, state, cfg), t)
                for (kind, entity_id), (views, state, encoded, t) in pending.items()]
        if rows:
            self._frames.put(pickle.dumps((oldest_kafka_ms, rows), protocol=pickle.HIGHEST_PROTOCOL))
            self._sent += 1

    def _send_frames(self) -> None:
        """The sender thread: frames to the child's stdin until ``None``, or until the child is gone."""
        stdin = self._proc.stdin
        while (frame := self._frames.get()) is not None:
            try:
                stdin.write(_HEADER.pack(len(frame)))
                stdin.write(frame)
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._failed = True
                while self._frames.get() is not None:  # keep flush() from blocking on a full queue
                    pass
                return
        stdin.close()

    def _died(self) -> str:
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        return (f"the feature writer process exited with code {self._proc.returncode}; features stopped being "
                f"written. Its log {self.log} ends with:\n{tail}\nFix the cause (often Redis unreachable) and restart the job.")

    def close(self) -> None:
        """Hand over what is staged, let the child finish writing, and fail if it did not."""
        if self._rows and not self._failed:
            self.flush(None, behind=True)
        self._frames.put(None)
        self._sender.join(timeout=60)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self._failed or self._proc.returncode != 0:
            raise RuntimeError(self._died())


def _widen_pipe(pipe: BinaryIO) -> None:
    """Ask for a 1 MiB pipe buffer (Linux; default 64 KiB): a write of several MB otherwise
    takes one wake-up of each process per 64 KiB, slow when the other core is busy."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default still works


def make_writer(settings: Settings, metrics: MetricsFile, name: str) -> InProcessWriter | ChildProcessWriter:
    if settings.stream.writer_process:
        return ChildProcessWriter(settings, metrics, name)
    return InProcessWriter(settings, metrics)


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # the job closed the pipe (or died)
    size = _HEADER.unpack(header)[0]
    frame = stream.read(size)
    if len(frame) < size:
        return None
    return frame


def serve(stream: BinaryIO, name: str) -> None:
    """The child: decode each write's states, write their views, record it; until end of input."""
    from streaming.job.stream_metrics import metrics_dir

    first = _read_frame(stream)
    if first is None:
        return
    settings = settings_from_snapshot(first.decode(), os.environ)
    writer = OnlineWriter(settings)
    writer.ping()
    metrics = MetricsFile(metrics_dir(settings), f"writer-{name}")
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    while (frame := _read_frame(stream)) is not None:
        oldest_kafka_ms, rows = pickle.loads(frame)
        for kind, views, entity_id, encoded, t in rows:
            _stage(writer, settings, views, entity_id, DECODERS[kind](encoded), t)
        _write(writer, metrics, oldest_kafka_ms)
        sys.stdout.buffer.write(WRITTEN)
        sys.stdout.flush()
        metrics.maybe_write(force=True)


if __name__ == "__main__":
    # a stop signals the whole process group: this process ends when the job closes its stdin,
    # after the writes it was handed (a kill -9 still ends it at once)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.argv[1])
