"""How a job's Python function carries the settings into Flink's workers: pickled with every
secret masked, the secrets taken back from the worker's environment (the job's own, or the
TaskManagers' on a cluster)."""

from __future__ import annotations

import os
from typing import Any

from infra.settings import settings_from_snapshot, settings_snapshot


class CarriesSettings:
    """Mixin for a function with a ``settings`` attribute."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "settings": settings_snapshot(self.settings)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "settings": settings_from_snapshot(state["settings"], os.environ)})


__all__ = ["CarriesSettings"]
