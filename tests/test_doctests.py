"""Doctests in the modules are examples users copy; they must run. Every module with one is
found from the source, so a new module's examples run without being listed anywhere."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streaming", "models", "infra", "features", "batch", "serving")


def _with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(line.lstrip().startswith(">>> ") for line in path.read_text().splitlines()):
                parts = path.relative_to(ROOT).with_suffix("").parts
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _with_examples()


def test_the_known_examples_are_found() -> None:
    assert {"features.compute", "streaming.events", "batch.attribution", "serving.rollout_guard"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0
