"""Synthetic model versions: the served weights nudged a little, published with their delta.

For hot-swap tests and benchmarks, which need many successive versions quickly (a real retrain
takes most of a minute). ``wrong_base`` computes the delta against other weights, as if it had
been copied from the wrong run: the registry accepts it, a server merging it must reject it.
"""

from __future__ import annotations

import torch

from models.registry import ModelRegistry


def publish_nudged_version(registry: ModelRegistry, seed: int, rows: int = 50, wrong_base: bool = False) -> str:
    """Publish (not promote) the served version with ``rows`` item rows and an output bias moved."""
    served = registry.served()
    if served is None:
        raise ValueError("nothing is served yet: run `recsys retrain` first")
    state, meta = registry.load(served)
    new = {k: v.clone() for k, v in state.items()}
    table = next(k for k in new if k.endswith("embedding_bags.item.weight"))
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randint(0, new[table].shape[0], (rows,), generator=gen)
    new[table][picked] += 0.01 * torch.randn(rows, new[table].shape[1], generator=gen)
    bias = next(k for k in new if k.startswith("over_arch") and k.endswith("bias"))
    new[bias] += 0.001
    base_state = {k: (v + 1.0 if k == table else v) for k, v in state.items()} if wrong_base else state
    items, counts = registry.catalogue(served)
    version, changed, problem = registry.publish_model(new, {**meta, "synthetic": {"seed": seed, "rows": rows}},
                                                       dict(zip(items, counts)), base=(served, base_state))
    if problem is not None:
        raise ValueError(f"could not make a delta for {version}: {problem}")
    return version
