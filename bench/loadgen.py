"""Open-loop HTTP load generator: requests at a fixed offered rate, in its own process.

Each request has a scheduled start (``t0 + i / rate``); its latency is measured from that
schedule, not from when it was actually sent, so a server that falls behind is charged for the
queueing it causes (no coordinated omission). Prints one JSON object per run.

    python -m bench.loadgen --url http://127.0.0.1:18080 --rate 300 --seconds 20 --users 1,2,3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import httpx
import numpy as np


async def _run(url: str, rate: float, seconds: float, users: list[str], k: int, seed: int) -> dict:
    rng = random.Random(seed)
    n = int(rate * seconds)
    results: list[tuple[float, float, bool]] = []  # (scheduled offset s, latency ms, ok)
    errors: list[str] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        await client.get("/healthz")
        t0 = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ok = False
            try:
                r = await client.get(f"/recommendations/{rng.choice(users)}", params={"k": k})
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:120]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
            results.append((scheduled - t0, (time.perf_counter() - scheduled) * 1000, ok))

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    lat = np.array([r[1] for r in results])
    return {"rate": rate, "seconds": seconds, "requests": n, "ok": sum(r[2] for r in results), "failed": n - sum(r[2] for r in results),
            "throughput": sum(r[2] for r in results) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "errors": errors[:5],
            "samples": [[round(s, 4), round(ms, 3), ok] for s, ms, ok in sorted(results)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="offered requests per second")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--users", required=True, help="comma-separated user ids to draw from")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = asyncio.run(_run(a.url, a.rate, a.seconds, a.users.split(","), a.k, a.seed))
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
