"""Background processes: one owner for their files, their start and stop, and their settings.

Every background process of the engine (broker, Redis, stream job, learner, API) is described by
a :class:`ServiceSpec` and lives under the data directory as ``run/<stem>.pid``,
``logs/<stem>.log`` and, for our own Python processes, ``run/<stem>.settings.json``: the exact
settings of the caller, with every secret masked; the secrets travel in the child's environment
(:func:`handoff_env`, :func:`handed_settings`), so no password is written to disk.

``start`` is idempotent (a healthy running process is left alone) and waits until the process
answers; ``stop`` signals the process group (SIGTERM, then SIGKILL) and only a PID whose command
line still matches the process, so a recycled PID is never hit.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.settings import Settings, load_settings, secret_env, settings_from_snapshot, settings_snapshot

HANDOFF_ENV = "RECSYS_SETTINGS_SNAPSHOT"  # path of the settings file a child process runs with


class ServiceError(RuntimeError):
    """A process could not be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # shown in messages
    argv: list[str]
    host: str
    port: int
    binary_hint: str  # substring of /proc/<pid>/cmdline that identifies our process
    run_dir: Path
    log_dir: Path
    ready: Callable[[], bool]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    stem: str = ""  # file names (default: name)
    stdin: bytes | None = None  # written to the process's standard input at start (e.g. a secret config)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.stem or self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.stem or self.name}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    ready: bool
    address: str

    def describe(self) -> str:
        if self.running and self.ready:
            return f"{self.name}: running (pid {self.pid}) on {self.address}"
        if self.running:
            return f"{self.name}: process {self.pid} alive but {self.address} not answering"
        return f"{self.name}: stopped"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_FREE_PORT_RANGE = range(20_000, 32_000)  # below Linux's ephemeral range (32768-60999)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for throwaway stacks in tests and benchmarks).

    Why not ``bind(0)``: the kernel may give the same ephemeral port to two calls in a row (a
    broker and a Redis then race for it), and an outgoing client connection may take it before
    the service binds. So ports come from below the ephemeral range and never twice per process.
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.choice(_FREE_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServiceError(f"no free port found on {host} in {_FREE_PORT_RANGE}")


def settings_file(settings: Settings, stem: str) -> Path:
    return settings.paths.run_dir / f"{stem}.settings.json"


def handoff_env(settings: Settings, stem: str) -> dict[str, str]:
    """Environment that hands exactly these settings to a child process: the values in
    ``run/<stem>.settings.json`` (secrets masked), the secrets as environment variables."""
    snapshot = settings_file(settings, stem)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = snapshot.with_suffix(".tmp")
    tmp.write_text(settings_snapshot(settings))
    os.replace(tmp, snapshot)
    return {HANDOFF_ENV: str(snapshot), **secret_env(settings)}


def received_settings() -> Settings:
    """The settings :func:`handoff_env` gave this process, or file + env ones when it was
    started by hand (a container, a unit file, ``flink run``)."""
    snapshot = os.environ.get(HANDOFF_ENV)
    if not snapshot:
        return load_settings()
    return settings_from_snapshot(Path(snapshot).read_text(), os.environ)


def running_pid(spec: ServiceSpec) -> int | None:
    """The PID of this process if it runs (a stale PID file or a recycled PID gives None)."""
    try:
        pid = int(spec.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_process(pid, spec) else None


def _is_our_process(pid: int, spec: ServiceSpec) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and spec.binary_hint.encode() in cmdline


def status(spec: ServiceSpec) -> ServiceStatus:
    pid = running_pid(spec)
    return ServiceStatus(spec.name, pid, pid is not None, pid is not None and spec.ready(), spec.address)


def start(spec: ServiceSpec, timeout_s: float) -> ServiceStatus:
    """Start one process unless it is already running and ready; wait until it answers."""
    pid = running_pid(spec)
    if pid is not None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if spec.ready():
                return ServiceStatus(spec.name, pid, True, True, spec.address)
            time.sleep(0.2)
        raise ServiceError(
            f"{spec.name} (pid {pid}) is running but {spec.address} does not answer; "
            f"see {spec.log_file}, then `recsys down` and `recsys up`"
        )
    if spec.port and port_open(spec.host, spec.port):
        raise ServiceError(
            f"port {spec.address} for {spec.name} is taken by another process: stop it or "
            f"choose another port (e.g. RECSYS_{spec.name.upper()}__PORT)"
        )
    for d in (spec.pid_file.parent, spec.log_file.parent, spec.cwd):
        d.mkdir(parents=True, exist_ok=True)
    with open(spec.log_file, "ab") as log:
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if spec.stdin is None else subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **spec.env} if spec.env else None,
        )
    if spec.stdin is not None:
        proc.stdin.write(spec.stdin)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    spec.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            spec.pid_file.unlink(missing_ok=True)
            tail = spec.log_file.read_text(errors="replace")[-800:]
            raise ServiceError(
                f"{spec.name} exited with code {proc.returncode} at start; log {spec.log_file}:\n{tail}"
            )
        if spec.ready():
            return ServiceStatus(spec.name, proc.pid, True, True, spec.address)
        time.sleep(0.1)
    stop(spec)
    raise ServiceError(f"{spec.name} did not answer on {spec.address} within {timeout_s}s; see {spec.log_file}")


def stop(spec: ServiceSpec, timeout_s: float = 10.0, kill: bool = False) -> bool:
    """Stop one process and everything it started (its process group) by its PID file: SIGTERM
    (SIGKILL with ``kill`` or after ``timeout_s``), then wait until the whole group is gone.
    True if a process was stopped."""
    pid = running_pid(spec)
    if pid is None:
        spec.pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.05)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _group_alive(pid):
            time.sleep(0.05)
    spec.pid_file.unlink(missing_ok=True)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in this process group."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


__all__ = ["HANDOFF_ENV", "ServiceError", "ServiceSpec", "ServiceStatus", "free_port", "received_settings",
           "handoff_env", "port_open", "running_pid", "settings_file", "start", "status", "stop"]
