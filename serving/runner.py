"""`recsys serve start|stop|status|run`: the API as a foreground or background process.

The background process gets exactly the caller's settings (infra.processes.handoff_env: the admin
token and the passwords travel in its environment, never in a file) and is stopped by its PID
like the other local services.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from infra import processes
from infra.processes import ServiceSpec, ServiceStatus
from infra.settings import Settings

STEM = "api"  # run/api.pid, logs/api.log, run/api.settings.json


def base_url(settings: Settings) -> str:
    return f"http://{settings.serving.host}:{settings.serving.port}"


def _answers(settings: Settings) -> bool:
    try:
        return httpx.get(base_url(settings) + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _spec(settings: Settings, env: dict[str, str] | None = None) -> ServiceSpec:
    s = settings.serving
    return ServiceSpec(name="serving", argv=[sys.executable, "-m", "serving"], host=s.host, port=s.port,
                       binary_hint="-m\x00serving", run_dir=settings.paths.run_dir, log_dir=settings.paths.log_dir,
                       stem=STEM, ready=lambda: _answers(settings), cwd=Path.cwd(), env=env or {})


def _child_env(settings: Settings) -> dict[str, str]:
    return {**processes.handoff_env(settings, STEM), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def start(settings: Settings, timeout_s: float = 120.0) -> ServiceStatus:
    """Start the API in the background (idempotent); returns once /healthz answers."""
    return processes.start(_spec(settings, _child_env(settings)), timeout_s)


def stop(settings: Settings) -> bool:
    return processes.stop(_spec(settings))


def running_pid(settings: Settings) -> int | None:
    return processes.running_pid(_spec(settings))


def run(settings: Settings) -> None:
    """Serve in the foreground (what a container or systemd unit runs)."""
    import torch
    import uvicorn

    from serving.app import create_app

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one request per core beats threads per op
    s = settings.serving
    if s.workers > 1:  # each worker process builds its app from these settings
        os.environ.update(_child_env(settings))
        uvicorn.run("serving.app:app_from_environment", factory=True, host=s.host, port=s.port, workers=s.workers,
                    log_level="warning")
    else:
        uvicorn.run(create_app(settings), host=s.host, port=s.port, log_level="warning", access_log=False)
