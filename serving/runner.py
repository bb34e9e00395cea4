"""`recsys serve start|stop|status|run`: the API as a foreground or background process.

The background process gets exactly the caller's settings (written to ``run/api.env``; the admin
token travels in the environment, never in a file) and is stopped by its PID like the other
local services.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from infra.services import ServiceSpec, ServiceStatus, _read_pid, start as start_service, stop as stop_service
from infra.settings import Settings

SETTINGS_ENV = "RECSYS_SERVING_SETTINGS"
TOKEN_ENV = "RECSYS_SERVING__ADMIN_TOKEN"


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
                       binary_hint="-m\x00serving", pid_file=settings.paths.run_dir / "api.pid",
                       log_file=settings.paths.log_dir / "api.log", ready=lambda: _answers(settings), cwd=Path.cwd(),
                       env=env or {})


def _child_env(settings: Settings) -> dict[str, str]:
    """Environment that hands these exact settings to another process (the token not in a file)."""
    env_file = settings.paths.run_dir / "api.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(settings.model_dump_json())
    env = {SETTINGS_ENV: str(env_file), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if settings.serving.admin_token is not None:
        env[TOKEN_ENV] = settings.serving.admin_token.get_secret_value()
    return env


def start(settings: Settings, timeout_s: float = 120.0) -> ServiceStatus:
    """Start the API in the background (idempotent); returns once /healthz answers."""
    return start_service(_spec(settings, _child_env(settings)), timeout_s)


def stop(settings: Settings) -> bool:
    return stop_service(_spec(settings))


def running_pid(settings: Settings) -> int | None:
    return _read_pid(_spec(settings))


def settings_from_environment() -> Settings:
    """The settings `start` wrote, or file + env ones when started by hand."""
    from pydantic import SecretStr

    from infra.settings import load_settings

    snapshot = os.environ.get(SETTINGS_ENV)
    if not snapshot:
        return load_settings()
    settings = Settings.model_validate_json(Path(snapshot).read_text())
    token = os.environ.get(TOKEN_ENV)
    serving = settings.serving.model_copy(update={"admin_token": SecretStr(token) if token else None})
    return settings.model_copy(update={"serving": serving})


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
