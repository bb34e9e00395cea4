"""Model deltas: what training publishes to serving between full versions.

A delta holds, for each embedding table, only the rows that moved by more than a threshold since
the base version, plus every dense (non-embedding) weight in full. Serving hot-swaps models, so
the file it fetches and merges should be small: a minute of training touches a tiny fraction of
the 100k user / 50k item rows, and the dense MLPs are a few thousand numbers. Skipping rows is
exact, not an approximation: sparse rows are trained by a row-wise Adagrad applied inside
backward (``models.ranking``), which only ever updates the rows a batch looked up, so a row no
batch touched is bit-for-bit the base row. With ``threshold > 0`` rows that moved less are left
at their base value on purpose (the manifest records the threshold and the digest of the merged
weights, so serving knows exactly what it runs).

On disk a delta is a directory with ``delta.safetensors`` (for an embedding key ``K``:
``K.rows``, int64 ascending row indices, and ``K.values``, the new rows; each dense key: the full
tensor) and ``manifest.json``, written last: a directory without a manifest is an unfinished
publish and is never read. The manifest carries the file's size and sha256 (checked before
anything is deserialised) and digests of the base and merged weights (checked by :func:`merge`),
so a delta is only ever applied to the exact weights it was computed from.

>>> base = {"m.embedding_bags.t.weight": torch.zeros(4, 2), "m.fc.bias": torch.zeros(3)}
>>> new = {k: v.clone() for k, v in base.items()}
>>> new["m.embedding_bags.t.weight"][2] += 0.5
>>> delta = compute_delta(base, new)
>>> delta.row_counts
{'m.embedding_bags.t.weight': 1}
>>> sorted(delta.tensors)
['m.embedding_bags.t.weight.rows', 'm.embedding_bags.t.weight.values', 'm.fc.bias']
>>> state_digest(apply_delta(base, delta.tensors)) == state_digest(new)
True
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "recsys-delta/1"
DELTA_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"
ROWS_SUFFIX = ".rows"
VALUES_SUFFIX = ".values"
_FIX = "re-publish it with `recsys retrain` or load the full version"


class DeltaError(ValueError):
    """A delta can't be computed, read or applied; the message says why and what to do instead."""


@dataclass
class Delta:
    """Changed embedding rows (``K.rows`` / ``K.values`` per table ``K``) and every dense tensor in full."""

    tensors: dict[str, Tensor]
    row_counts: dict[str, int] = field(default_factory=dict)  # embedding key -> rows in the delta
    threshold: float = 0.0

    @property
    def dense_keys(self) -> list[str]:
        """The dense (full-tensor) keys, sorted."""
        parts = {k + s for k in self.row_counts for s in (ROWS_SUFFIX, VALUES_SUFFIX)}
        return sorted(k for k in self.tensors if k not in parts)


def embedding_keys(state: Mapping[str, Tensor]) -> list[str]:
    """The embedding-table keys, sorted: 2-D tensors with an ``embedding_bags`` path component.

    That is how TorchRec names ``EmbeddingBagCollection`` tables
    (``sparse_arch.embedding_bag_collection.embedding_bags.<table>.weight``); everything else is dense.

    >>> embedding_keys({"a.embedding_bags.user.weight": torch.zeros(3, 2), "a.embedding_bags.x": torch.zeros(3),
    ...                 "over_arch.weight": torch.zeros(3, 2)})
    ['a.embedding_bags.user.weight']
    """
    return sorted(k for k, v in state.items()
                  if v.dim() == 2 and (k.startswith("embedding_bags.") or ".embedding_bags." in k))


def _describe(t: Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def _check_same_architecture(base: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> None:
    problems = []
    if missing := sorted(base.keys() - new.keys()):
        problems.append(f"keys only in the base: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if added := sorted(new.keys() - base.keys()):
        problems.append(f"keys only in the new model: {', '.join(added[:5])}{' ...' if len(added) > 5 else ''}")
    for k in sorted(base.keys() & new.keys()):
        if base[k].shape != new[k].shape or base[k].dtype != new[k].dtype:
            problems.append(f"{k} is {_describe(base[k])} in the base, {_describe(new[k])} in the new model")
    if problems:
        raise DeltaError("model architecture changed between the base and the new version ("
                         + "; ".join(problems[:5]) + "): a delta can't express that, publish a full version instead")


def compute_delta(base: Mapping[str, Tensor], new: Mapping[str, Tensor], threshold: float = 0.0) -> Delta:
    """Rows of each embedding table whose max ``|new - base|`` exceeds ``threshold`` (0: any change;
    a NaN counts as a change), plus every dense tensor of ``new``. The tensors are copies: training
    ``new`` further doesn't change the delta. Raises :class:`DeltaError` when keys, shapes or dtypes differ.
    """
    if not threshold >= 0:
        raise ValueError(f"delta threshold must be >= 0, got {threshold}")
    _check_same_architecture(base, new)
    emb = set(embedding_keys(new))
    tensors: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for k in sorted(new):
        n = new[k].detach().cpu()
        if k not in emb:
            tensors[k] = n.clone().contiguous()
            continue
        b = base[k].detach().cpu()
        if threshold == 0 or not n.shape[1]:
            changed = (n != b).any(dim=1)  # NaN != NaN: counts as changed
        else:
            changed = ~((n - b).abs_().amax(dim=1) <= threshold)  # NaN counts as moved
        rows = changed.nonzero().flatten().to(torch.int64)  # ascending
        tensors[k + ROWS_SUFFIX] = rows
        tensors[k + VALUES_SUFFIX] = n.index_select(0, rows).contiguous()
        counts[k] = int(rows.numel())
    return Delta(tensors=tensors, row_counts=counts, threshold=float(threshold))


def apply_delta(base: Mapping[str, Tensor], delta_tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A NEW state dict: ``base`` with the delta's rows written into its tables and its dense tensors
    replaced. ``base`` is never modified. Raises :class:`DeltaError` when the delta doesn't fit the base
    (keys, dtypes, shapes, row indices).
    """
    emb = embedding_keys(base)
    expected = {k + s for k in emb for s in (ROWS_SUFFIX, VALUES_SUFFIX)} | (base.keys() - set(emb))
    missing, extra = sorted(expected - delta_tensors.keys()), sorted(delta_tensors.keys() - expected)
    if missing or extra:
        raise DeltaError(f"delta doesn't fit this model: missing {missing[:5] or 'nothing'}, unexpected "
                         f"{extra[:5] or 'nothing'}; it was made for another architecture, load the full version")
    out: dict[str, Tensor] = {}
    for k, b in base.items():
        b = b.detach()
        if k not in emb:
            d = delta_tensors[k]
            if d.shape != b.shape or d.dtype != b.dtype:
                raise DeltaError(f"delta tensor {k} is {_describe(d)}, the model has {_describe(b)}: "
                                 "load the full version")
            out[k] = d.detach().to(b.device).clone()
            continue
        rows, values = delta_tensors[k + ROWS_SUFFIX], delta_tensors[k + VALUES_SUFFIX]
        if rows.dtype != torch.int64 or rows.dim() != 1:
            raise DeltaError(f"delta {k}{ROWS_SUFFIX} must be 1-D int64 row indices, got {_describe(rows)}")
        if values.dtype != b.dtype or values.shape != (rows.numel(), b.shape[1]):
            raise DeltaError(f"delta {k}{VALUES_SUFFIX} is {_describe(values)}, expected "
                             f"{str(b.dtype).removeprefix('torch.')}[{rows.numel()}, {b.shape[1]}] "
                             f"({rows.numel()} rows of the {_describe(b)} table): load the full version")
        if rows.numel():
            lo, hi = int(rows.min()), int(rows.max())
            if lo < 0 or hi >= b.shape[0]:
                raise DeltaError(f"delta {k}{ROWS_SUFFIX} has row {lo if lo < 0 else hi}, the table has rows "
                                 f"0..{b.shape[0] - 1}: load the full version")
            if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
                raise DeltaError(f"delta {k}{ROWS_SUFFIX} is not strictly ascending (repeated or unsorted rows): "
                                 "load the full version")
        table = b.clone()
        table.index_copy_(0, rows.to(b.device), values.to(b.device))
        out[k] = table
    return out


def state_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 over the sorted keys and each tensor's dtype, shape and bytes: equal iff bit-for-bit equal.

    >>> state_digest({"w": torch.zeros(2)}) == state_digest({"w": torch.zeros(2)})
    True
    >>> state_digest({"w": torch.zeros(2)}) == state_digest({"w": torch.zeros(2, dtype=torch.float64)})
    False
    """
    h = hashlib.sha256(FORMAT.encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"\n{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_replace(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk, rename it over ``final`` and flush the directory entry (best effort)."""
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_delta(directory: Path, delta: Delta, base_state: Mapping[str, Tensor], base_version: str,
                target_version: str) -> dict[str, Any]:
    """Write ``delta.safetensors`` then ``manifest.json`` into ``directory`` (each to a temp file, then
    renamed; any old manifest is removed first, so readers never pair a manifest with the wrong file).
    Returns the manifest. Raises :class:`DeltaError` if the delta doesn't apply to ``base_state``.
    """
    directory = Path(directory)
    try:
        merged = apply_delta(base_state, delta.tensors)
    except DeltaError as e:
        raise DeltaError(f"delta {base_version} -> {target_version} doesn't apply to its base: {e}") from e
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path, data_path = directory / MANIFEST_FILE, directory / DELTA_FILE
    manifest_path.unlink(missing_ok=True)
    tmp = directory / f".{DELTA_FILE}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in delta.tensors.items()}, str(tmp),
              metadata={"format": FORMAT, "base_version": base_version, "target_version": target_version})
    _fsync_replace(tmp, data_path)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "base_version": base_version,
        "target_version": target_version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "threshold": delta.threshold,
        "tables": {k: {"rows": delta.row_counts[k], "total_rows": int(base_state[k].shape[0]),
                       "dim": int(base_state[k].shape[1])} for k in sorted(delta.row_counts)},
        "dense_keys": delta.dense_keys,
        "file": {"name": DELTA_FILE, "bytes": data_path.stat().st_size, "sha256": _sha256_file(data_path)},
        "base_digest": state_digest(base_state),
        "merged_digest": state_digest(merged),
    }
    tmp = directory / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_replace(tmp, manifest_path)
    return manifest


_MANIFEST_FIELDS = ("format", "base_version", "target_version", "threshold", "tables", "dense_keys", "file",
                    "base_digest", "merged_digest")


def read_delta(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The manifest and tensors of a published delta. The manifest, format, file size and sha256 are
    checked BEFORE the file is deserialised; any problem raises :class:`DeltaError` saying what to do.
    """
    directory = Path(directory)
    where = f"delta {directory}"
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DeltaError(f"{where}: no {MANIFEST_FILE} (unfinished or interrupted publish?): {_FIX}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeltaError(f"{where}: {MANIFEST_FILE} is unreadable ({e}): {_FIX}") from e
    if not isinstance(manifest, dict) or (missing := [f for f in _MANIFEST_FIELDS if f not in manifest]):
        what = "not a JSON object" if not isinstance(manifest, dict) else f"missing {', '.join(missing)}"
        raise DeltaError(f"{where}: {MANIFEST_FILE} is {what}: {_FIX}")
    if manifest["format"] != FORMAT:
        raise DeltaError(f"{where}: format {manifest['format']!r}, this reader understands {FORMAT!r}: "
                         "upgrade the server or load the full version")
    info = manifest["file"]
    name = info.get("name") if isinstance(info, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise DeltaError(f"{where}: {MANIFEST_FILE} names no plain data file ({info!r}): {_FIX}")
    data_path = directory / name
    try:
        data = data_path.read_bytes()
    except OSError as e:
        raise DeltaError(f"{where}: can't read {name} ({e.strerror or e}): {_FIX}") from e
    if len(data) != info.get("bytes"):
        raise DeltaError(f"{where}: {name} is {len(data)} bytes, manifest says {info.get('bytes')} "
                         f"(truncated copy?): {_FIX}")
    if (digest := hashlib.sha256(data).hexdigest()) != info.get("sha256"):
        raise DeltaError(f"{where}: {name} has sha256 {digest[:12]}..., manifest says "
                         f"{str(info.get('sha256'))[:12]}... (corrupted copy?): {_FIX}")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise DeltaError(f"{where}: {name} can't be decoded ({e}): {_FIX}") from e
    tables, dense = manifest["tables"], manifest["dense_keys"]
    if not isinstance(tables, dict) or not isinstance(dense, list) or not all(isinstance(k, str) for k in dense):
        raise DeltaError(f"{where}: {MANIFEST_FILE} has malformed tables / dense_keys: {_FIX}")
    expected = {k + s for k in tables for s in (ROWS_SUFFIX, VALUES_SUFFIX)} | set(dense)
    if set(tensors) != expected:
        raise DeltaError(f"{where}: {name} holds other tensors than its manifest lists: {_FIX}")
    for k, t in tables.items():
        if not isinstance(t, dict) or tensors[k + ROWS_SUFFIX].numel() != t.get("rows"):
            raise DeltaError(f"{where}: {k} has {tensors[k + ROWS_SUFFIX].numel()} rows, manifest says "
                             f"{t.get('rows') if isinstance(t, dict) else t!r}: {_FIX}")
    return manifest, tensors


def merge(directory: Path, base_state: Mapping[str, Tensor], base_version: str) -> dict[str, Tensor]:
    """Read the delta in ``directory`` and apply it to ``base_state`` (the weights of ``base_version``,
    which is never modified): checks the delta's base version and base digest first and the merged
    digest after. Returns the merged state dict; raises :class:`DeltaError` on any mismatch.
    """
    return merge_with_digest(directory, base_state, base_version)[0]


def merge_with_digest(directory: Path, base_state: Mapping[str, Tensor], base_version: str,
                      base_digest: str | None = None) -> tuple[dict[str, Tensor], str]:
    """:func:`merge`, for a caller that keeps digests: ``base_digest`` (when the caller already knows
    the base weights' digest) saves hashing them again; returns the merged weights and their digest."""
    manifest, tensors = read_delta(directory)
    where = f"delta {Path(directory)}"
    want, target = manifest["base_version"], manifest["target_version"]
    if want != base_version:
        raise DeltaError(f"{where} is for base {want}, serving {base_version}: apply deltas in order "
                         f"or load the full version {target}")
    if (base_digest or state_digest(base_state)) != manifest["base_digest"]:
        raise DeltaError(f"{where} is for base {want}, but the served weights labelled {base_version} differ from "
                         f"the ones it was computed against (digest mismatch): load the full version {target}")
    try:
        merged = apply_delta(base_state, tensors)
    except DeltaError as e:
        raise DeltaError(f"{where}: {e}") from e
    if (digest := state_digest(merged)) != manifest["merged_digest"]:
        raise DeltaError(f"{where}: merged weights don't match the manifest's merged_digest "
                         f"(delta and manifest disagree): load the full version {target}")
    return merged, digest
