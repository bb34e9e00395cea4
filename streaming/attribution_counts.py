"""Where live attribution's counts live in Redis, spelt once: the job writes them, the API reads them.

Each job shard (a Flink key) keeps its running totals in its state and writes them as they are
(not increments): a job restored from a checkpoint re-reads the records after it and writes the
same totals again, so Redis never counts a record twice. One hash per (model version, arm,
shard), ``recsys:attribution:<project>:<version>:<arm>:s<shard>``, with the fields ``lists``,
``hits``, ``shown``, ``engaged``, ``updated_at_ms`` and one per source and position
(``src:<source>:<position>:shown|engaged``); readers sum the shards. A HyperLogLog
``...:<version>:<arm>:users`` counts the users reached (about 0.8% standard error, a few KB per
arm whatever the traffic; adding a user twice is harmless); the set
``recsys:attribution:<project>:arms`` lists the (version, arm) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import redis

from infra.settings import Settings
from streaming.live_attribution import Increment

PREFIX = "recsys:attribution"
TOTALS = ("lists", "hits", "shown", "engaged")
SEP = "\x1f"
Pair = tuple[str, str]  # (model version, arm)


@dataclass
class RunningTotals:
    """One shard's totals per (version, arm), and what changed since they were last written."""

    totals: dict[Pair, dict[str, int]] = field(default_factory=dict)
    changed: set[Pair] = field(default_factory=set)
    new_users: dict[Pair, set[str]] = field(default_factory=dict)

    def apply(self, increments: Iterable[Increment]) -> None:
        for inc in increments:
            pair = (inc.version, inc.arm)
            fields = self.totals.setdefault(pair, {})
            fields[inc.field] = fields.get(inc.field, 0) + inc.amount
            self.changed.add(pair)
            if inc.user is not None:
                self.new_users.setdefault(pair, set()).add(inc.user)

    def written(self) -> None:
        self.changed, self.new_users = set(), {}


@dataclass(frozen=True)
class ArmTotals:
    version: str
    arm: str
    lists: int
    hits: int
    shown: int
    engaged: int
    users: int
    updated_at_ms: int
    by_source: dict[tuple[str, int], tuple[int, int]]  # (source, position) -> (shown, engaged)


class AttributionCounts:
    """Writes shards' totals to, and reads summed totals from, the attribution hashes."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def for_settings(cls, settings: Settings) -> "AttributionCounts":
        """The counts of this deployment's Feast project (tests and side-by-side stacks stay apart)."""
        r = settings.redis
        client = redis.Redis(host=r.host, port=r.port, password=r.secret, socket_timeout=5)
        return cls(client, f"{PREFIX}:{settings.features.project}")

    def _key(self, version: str, arm: str) -> str:
        return f"{self.prefix}:{version}:{arm}"

    def write(self, shard: int, running: RunningTotals, now_ms: int) -> int:
        """Write the changed pairs' totals of one shard (one pipeline); returns the pairs written."""
        if not running.changed:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for version, arm in running.changed:
            key = self._key(version, arm)
            pipe.hset(f"{key}:s{shard}", mapping={**running.totals[(version, arm)], "updated_at_ms": now_ms})
            pipe.sadd(f"{key}:shards", shard)
        for (version, arm), users in running.new_users.items():
            pipe.pfadd(self._key(version, arm) + ":users", *users)
        pipe.sadd(f"{self.prefix}:arms", *(f"{v}{SEP}{a}" for v, a in running.changed))
        pipe.execute()
        written = len(running.changed)
        running.written()
        return written

    def pairs(self) -> list[Pair]:
        """Every (version, arm) with counts."""
        return sorted(tuple(m.decode().split(SEP, 1)) for m in self.client.smembers(f"{self.prefix}:arms"))

    def read(self, version: str, arm: str) -> ArmTotals:
        key = self._key(version, arm)
        shards = sorted(int(s) for s in self.client.smembers(f"{key}:shards"))
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hgetall(f"{key}:s{shard}")
        pipe.pfcount(key + ":users")
        *per_shard, users = pipe.execute()
        values: dict[str, int] = {}
        updated = 0
        for fields in per_shard:
            for k, v in fields.items():
                name = k.decode()
                if name == "updated_at_ms":
                    updated = max(updated, int(v))
                else:
                    values[name] = values.get(name, 0) + int(v)
        by_source: dict[tuple[str, int], list[int]] = {}
        for name, value in values.items():
            if name.startswith("src:"):
                _, source, position, what = name.split(":")  # source names hold no ':'
                by_source.setdefault((source, int(position)), [0, 0])[what == "engaged"] = value
        return ArmTotals(version, arm, *(values.get(f, 0) for f in TOTALS), users=int(users), updated_at_ms=updated,
                         by_source={k: (v[0], v[1]) for k, v in by_source.items()})

    def all(self) -> list[ArmTotals]:
        return [self.read(v, a) for v, a in self.pairs()]

    def of(self, pairs: Mapping[str, Pair]) -> dict[str, ArmTotals]:
        """Totals of named pairs, e.g. an experiment's arms: {arm name: (version, arm)}."""
        return {name: self.read(*pair) for name, pair in pairs.items()}

    def clear(self) -> None:
        keys = list(self.client.scan_iter(f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)


__all__ = ["ArmTotals", "AttributionCounts", "PREFIX", "RunningTotals", "TOTALS"]
