"""Test session fixtures: a real Tansu broker and Redis on free loopback ports.

The stack is started once per session under a temporary data directory (so tests never touch a
demo's ``.recsys``) and stopped at the end; each test gets its own topic names.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from infra import services
from infra.processes import free_port
from infra.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ML100K = (REPO_ROOT / ".." / "shared" / "data" / "ml-100k" / "u.data").resolve()


def make_settings(data_dir: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        ml100k_path=ML100K,
        broker={"port": free_port()},
        redis={"port": free_port(), "password": "test-redis-secret"},  # every client must authenticate
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("recsys-stack"))
    services.up(settings)
    yield settings
    services.down(settings)


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    """Session stack with topics unique to this test (created here)."""
    from infra.services import ensure_topics

    tag = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(
        update={
            "topics": stack_settings.topics.model_copy(
                update={"events": f"events-{tag}", "dlq": f"dlq-{tag}", "impressions": f"impressions-{tag}"}
            )
        }
    )
    ensure_topics(s)
    return s


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not ML100K.is_file():
        pytest.fail(f"MovieLens file missing at {ML100K}: the shared data folder must sit beside the repo")
    return ML100K


def isolated(stack_settings: Settings, data_dir: Path, **stream: object) -> Settings:
    """The session's broker and Redis, with this test's own topics, data dir and Feast project."""
    from infra.services import ensure_topics

    tag = uuid.uuid4().hex[:8]
    s = Settings(
        data_dir=data_dir,
        ml100k_path=ML100K,
        broker=stack_settings.broker.model_dump(),
        redis=stack_settings.redis.model_dump(),
        topics={"events": f"events-{tag}", "dlq": f"dlq-{tag}", "impressions": f"impressions-{tag}"},
        features={"project": f"t{tag}"},
        stream={"group_id": f"stream-{tag}", "topic_epoch": tag, **stream},
    )
    ensure_topics(s)
    return s
