"""The stream job's in-process copy of the feature states it owns, in front of Flink map state."""

from __future__ import annotations

from typing import Any, Callable


class LocalStateCache:
    """Deserialised states of the keys this instance owns, in front of Flink map state.

    A map-state read is a blocking round trip to the JVM (around a millisecond on a busy 2-core
    box); this instance is the only writer of its keys, so its own copy is always current and
    Flink state (written every batch) is only read when it may hold something the copy lacks:
    after a restore, or after an eviction. For a key first seen with no state at all
    (``authoritative``), a missing entity is simply new, with no read.
    """

    def __init__(self, max_entries: int, decode: Callable[[bytes], Any]) -> None:
        self.max_entries = max_entries
        self.decode = decode
        self._states: dict[tuple[int, str], Any] = {}
        self._authoritative: set[int] = set()

    def mark_authoritative(self, key: int) -> None:
        self._authoritative.add(key)

    def get(self, key: int, entity: str, state: Any, new: Any) -> Any:
        found = self._states.get((key, entity))
        if found is None:
            stored = None if key in self._authoritative else state.get(entity)
            found = self._keep(key, entity, new() if stored is None else self.decode(stored))
        return found

    def adopt(self, key: int, entity: str, stored: bytes) -> Any:
        """The cached state, or ``stored`` (read from Flink state by the caller) decoded and cached."""
        found = self._states.get((key, entity))
        return found if found is not None else self._keep(key, entity, self.decode(stored))

    def _keep(self, key: int, entity: str, value: Any) -> Any:
        if len(self._states) >= self.max_entries:
            self._states.clear()
            self._authoritative.clear()  # evicted states live only in Flink state now
        self._states[(key, entity)] = value
        return value


__all__ = ["LocalStateCache"]
