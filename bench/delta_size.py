"""delta_vs_full_size_1pct: bytes serving fetches per update, a model delta vs the full model.

The default ``ModelSettings()`` model (100k user rows, 50k item rows, dim 32; ``--dense`` dense
features). For each fraction of touched rows (0.1%, 1%, 5%, 10%, 50%, 100%) a "new" model is made
from the base by moving that fraction of the rows of EACH table (random rows, small noise) and
every dense weight, as training does. Measured: ``delta.safetensors`` bytes (what
``models.delta.write_delta`` publishes: changed rows + row indices + all dense weights) vs the
full model's safetensors bytes (``safetensors.torch.save_file`` of the whole state dict), and
median times of ``compute_delta``, ``write_delta`` (file + manifest, incl. the base and merged
digests) and ``merge`` (read + sha256 + decode + base digest + apply + merged digest) next to saving
the full model and loading it (read + sha256 + decode).

Recorded: the 1% point, ratio = full bytes / delta bytes (bigger is better), goal 10. A table goes
to the terminal and a plot of delta size / full size vs fraction touched to docs/img/delta_size.png.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import load, save_file  # noqa: E402

from bench.common import command_line, record  # noqa: E402
from models.config import ModelSettings  # noqa: E402
from models.delta import compute_delta, embedding_keys, merge, write_delta  # noqa: E402
from models.ranking import build_model  # noqa: E402

NAME = "delta_vs_full_size_1pct"
FRACTIONS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0)
RECORDED_FRACTION = 0.01
REPO = Path(__file__).resolve().parents[1]
PLOT = REPO / "docs" / "img" / "delta_size.png"


def touched_model(base: dict[str, torch.Tensor], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """``base`` with ``fraction`` of the rows of each embedding table and every dense tensor moved."""
    g = torch.Generator().manual_seed(seed)
    emb = set(embedding_keys(base))
    new = {}
    for k, v in base.items():
        t = v.clone()
        if k in emb:
            n = round(fraction * t.shape[0])
            rows = torch.randperm(t.shape[0], generator=g)[:n]
            t[rows] += 0.01 * torch.randn(n, t.shape[1], generator=g)
        else:
            t += 0.01 * torch.randn(t.shape, generator=g)
        new[k] = t
    return new


def load_full(path: Path) -> dict[str, torch.Tensor]:
    """What serving does with a full version, with the same integrity check a delta gets: read the
    file, sha256 it, decode it (safetensors' ``load_file`` alone maps the file lazily and reads nothing)."""
    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    return load(data)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up, untimed (allocator, page cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", type=int, default=13, help="dense features")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per operation (median counts)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()

    cfg = ModelSettings()
    base = {k: v.detach().clone() for k, v in build_model(cfg, n_dense=args.dense).state_dict().items()}
    emb = embedding_keys(base)
    total_rows = sum(base[k].shape[0] for k in emb)
    console = Console(width=max(Console().width, 150))
    console.print(f"model: dim {cfg.embedding_dim}, {cfg.user_buckets:,} user / {cfg.item_buckets:,} item rows, "
                  f"{sum(v.numel() for k, v in base.items() if k not in emb):,} dense weights; "
                  f"torch threads {torch.get_num_threads()}")

    results = []
    with tempfile.TemporaryDirectory(prefix="recsys-delta-bench-") as tmp:
        full_path = Path(tmp) / "full.safetensors"
        for fraction in FRACTIONS:
            new = touched_model(base, fraction, args.seed)
            save_s = median_s(lambda: save_file(new, str(full_path)), args.repeats)
            full_bytes = full_path.stat().st_size
            load_s = median_s(lambda: load_full(full_path), args.repeats)
            compute_s = median_s(lambda: compute_delta(base, new), args.repeats)
            delta = compute_delta(base, new)
            directory = Path(tmp) / f"delta-{fraction}"
            write_s = median_s(lambda: write_delta(directory, delta, base, "v1", "v2"), args.repeats)
            manifest = write_delta(directory, delta, base, "v1", "v2")
            merge_s = median_s(lambda: merge(directory, base, "v1"), args.repeats)
            merged = merge(directory, base, "v1")
            assert all(torch.equal(merged[k], new[k]) for k in new), "merged weights differ from the new model"
            rows = sum(t["rows"] for t in manifest["tables"].values())
            results.append({"fraction": fraction, "rows": rows, "delta_bytes": manifest["file"]["bytes"],
                            "full_bytes": full_bytes, "compute_s": compute_s, "write_s": write_s,
                            "merge_s": merge_s, "save_s": save_s, "load_s": load_s})

    table = Table(title=f"model delta vs full model ({total_rows:,} embedding rows, median of {args.repeats})")
    for col in ("touched", "rows", "delta", "full", "delta/full", "full/delta", "compute", "write delta",
                "merge delta", "save full", "load full"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(f"{r['fraction']:.1%}", f"{r['rows']:,}", f"{r['delta_bytes'] / 1e6:.3f} MB",
                      f"{r['full_bytes'] / 1e6:.3f} MB", f"{r['delta_bytes'] / r['full_bytes']:.4f}",
                      f"{r['full_bytes'] / r['delta_bytes']:.1f}x", f"{r['compute_s'] * 1e3:.1f} ms",
                      f"{r['write_s'] * 1e3:.1f} ms", f"{r['merge_s'] * 1e3:.1f} ms",
                      f"{r['save_s'] * 1e3:.1f} ms", f"{r['load_s'] * 1e3:.1f} ms")
    console.print(table)

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [r["fraction"] for r in results]
    ax.plot(xs, [r["delta_bytes"] / r["full_bytes"] for r in results], "o-", label="delta / full model bytes")
    ax.plot(xs, xs, "--", color="grey", label="fraction of rows touched")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of embedding rows touched")
    ax.set_ylabel("delta size / full model size")
    ax.set_title(f"Model delta size (dim {cfg.embedding_dim}, {cfg.user_buckets // 1000}k + "
                 f"{cfg.item_buckets // 1000}k rows)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    console.print(f"plot: {args.plot}")

    point = next(r for r in results if r["fraction"] == RECORDED_FRACTION)
    ratio = point["full_bytes"] / point["delta_bytes"]
    console.print(f"{RECORDED_FRACTION:.0%} touched: delta {point['delta_bytes']:,} bytes, full {point['full_bytes']:,} "
                  f"bytes, ratio {ratio:.1f}")
    if args.no_record:
        return
    command = command_line("delta_size.py", parser, args)
    record(
        NAME,
        value=point["delta_bytes"],
        baseline=point["full_bytes"],
        ratio=ratio,
        unit="bytes",
        goal=10,
        command=command,
        note=(f"1% of rows of each table + all dense weights touched ({point['rows']:,} of {total_rows:,} rows), "
              f"dim {cfg.embedding_dim}; write delta {point['write_s'] * 1e3:.1f} ms, merge {point['merge_s'] * 1e3:.1f} ms "
              f"vs save full {point['save_s'] * 1e3:.1f} ms, load full {point['load_s'] * 1e3:.1f} ms "
              f"(median of {args.repeats}); 100% touched: delta/full "
              f"{results[-1]['delta_bytes'] / results[-1]['full_bytes']:.3f}"),
    )


if __name__ == "__main__":
    main()
