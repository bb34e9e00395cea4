"""Synthetic model versions: the served weights nudged a little, published with their delta.

For hot-swap tests and benchmarks, which need many successive versions quickly (a real retrain
takes most of a minute). ``wrong_base`` computes the delta against other weights, as if it had
been copied from the wrong run: the registry accepts it, a server merging it must reject it.
:func:`publish_degraded_version` makes a deliberately bad one (its candidate ranker reversed),
for showing a guarded rollout roll it back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from models.registry import CATALOGUE, MANIFEST, META, WEIGHTS, ModelRegistry


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


def publish_degraded_version(registry: ModelRegistry) -> str:
    """Publish (not promote) the served version with its candidate ranker's scores negated: it
    ranks the candidate pool upside down, so its lists hold the pool's least likely items."""
    from models.list_ranker import RANKER_FILE, ListRanker
    from models.similarity import SIMILARITY_SOURCE

    served = registry.served()
    if served is None:
        raise ValueError("nothing is served yet: run `recsys retrain` first")
    source = registry.path(served)
    if not (source / RANKER_FILE).is_file():
        raise ValueError(f"{served} has no candidate ranker to reverse (ranker.enabled was off when it was trained)")
    state, meta = registry.load(served)
    items, counts = registry.catalogue(served)
    ranker = ListRanker.load(source / RANKER_FILE)
    last = ranker.mlp[-1]
    with torch.no_grad():
        last.weight.neg_()
        last.bias.neg_()
    own = {WEIGHTS, META, CATALOGUE, MANIFEST, RANKER_FILE}
    with tempfile.TemporaryDirectory() as tmp:
        files = {p.name: p for p in source.iterdir() if p.is_file() and p.name not in own}
        files[RANKER_FILE] = ranker.save(Path(tmp))
        meta = {k: v for k, v in meta.items() if k != SIMILARITY_SOURCE}  # its own (reversed) ranker is read
        version, _, problem = registry.publish_model(state, {**meta, "synthetic": {"degraded": "ranker reversed"}},
                                                     dict(zip(items, counts)), base=(served, state), extra_files=files)
    if problem is not None:
        raise ValueError(f"could not make a delta for {version}: {problem}")
    return version
