"""Open-loop HTTP load generator: requests at a fixed offered rate, in its own process.

Each request has a scheduled start (``t0 + i / rate``); its latency is measured from that
schedule, not from when it was actually sent, so a server that falls behind is charged for the
queueing it causes (no coordinated omission). A request due while ``--max-in-flight`` are still
open, or unanswered after ``--timeout`` s, counts as failed: an overloaded server shows up as
failures instead of a run that never ends. Prints one JSON object per run.

    python -m bench.loadgen --url http://127.0.0.1:18080 --rate 300 --seconds 20 --users 1,2,3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from urllib.parse import urlsplit

import numpy as np


class Connections:
    """Keep-alive HTTP/1.1 connections over asyncio streams: a load generator must cost far less
    CPU per request than the server it measures (httpx's async client costs about as much as a
    trivial FastAPI handler, and on a 2-core box it would measure itself)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.idle:
            try:
                return await self._get(path, self.idle.pop())
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise
                # the server closed an idle keep-alive connection: retry once on a fresh one, as browsers do
        return await self._get(path, await asyncio.open_connection(self.host, self.port))

    async def _get(self, path: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
            body = await asyncio.wait_for(reader.readexactly(length), self.timeout)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _run(url: str, rate: float, seconds: float, users: list[str], k: int, seed: int, max_in_flight: int,
               timeout: float) -> dict:
    rng = random.Random(seed)
    n = int(rate * seconds)
    results: list[tuple[float, float, bool]] = []  # (scheduled offset s, latency ms, ok)
    errors: list[str] = []
    in_flight = [0]
    pool = Connections(url, timeout)
    await pool.get("/healthz")
    t0 = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ok = False
        if in_flight[0] >= max_in_flight:
            errors.append("overload: too many requests in flight")
            results.append((scheduled - t0, float("nan"), False))
            return
        in_flight[0] += 1
        try:
            status, body = await pool.get(f"/recommendations/{rng.choice(users)}?k={k}")
            ok = status == 200
            if not ok:
                errors.append(f"{status} {body[:120]!r}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, StopIteration) as e:
            errors.append(repr(e))
        finally:
            in_flight[0] -= 1
        results.append((scheduled - t0, (time.perf_counter() - scheduled) * 1000, ok))

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    pool.close()
    lat = np.array([r[1] for r in results if not np.isnan(r[1])] or [float("nan")])
    return {"rate": rate, "seconds": seconds, "requests": n, "ok": sum(r[2] for r in results), "failed": n - sum(r[2] for r in results),
            "throughput": sum(r[2] for r in results) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "errors": errors[:5],
            "samples": [[round(s, 4), None if np.isnan(ms) else round(ms, 3), ok] for s, ms, ok in sorted(results)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="offered requests per second")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--users", required=True, help="comma-separated user ids to draw from")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-in-flight", type=int, default=200)
    p.add_argument("--timeout", type=float, default=2.0)
    a = p.parse_args(argv)
    out = asyncio.run(_run(a.url, a.rate, a.seconds, a.users.split(","), a.k, a.seed, a.max_in_flight, a.timeout))
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
