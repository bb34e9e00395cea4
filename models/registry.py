"""The model registry: a directory of immutable, checksummed model versions and a serving pointer.

Layout under ``settings.paths.models_dir``::

    versions/v0003/weights.safetensors   the full state dict (safetensors: loading runs no code)
    versions/v0003/model.json            config, feature spec, metrics, lineage (Delta table version,
                                         feature registry digest, code version, seed, base version)
    versions/v0003/catalogue.json        the items the model was trained on, with their training counts
                                         (what the server ranks and falls back to for cold users)
    versions/v0003/delta-from-v0002/     the delta to the version that was serving (models.delta)
    versions/v0003/manifest.json         size + sha256 of every file above; written last
    serving.json                         {"current": "v0003", "history": [...]} (promotion, rollback)

A version directory is assembled aside and renamed into place, and ``manifest.json`` is checked
on every load, so a half-written, truncated or altered version is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from models.config import ModelSettings

WEIGHTS = "weights.safetensors"
META = "model.json"
MANIFEST = "manifest.json"
SERVING = "serving.json"
CATALOGUE = "catalogue.json"


def delta_dir_name(base: str) -> str:
    """The directory of a version's delta to ``base`` (``delta-from-v0002``)."""
    return f"delta-from-{base}"


class VersionMeta(dict):
    """A version's ``model.json``: the stored dict (every key as written), with typed reads of
    what readers need, so no reader re-spells a key or rebuilds the model config by hand."""

    @property
    def model_settings(self) -> "ModelSettings":
        from models.config import ModelSettings

        return ModelSettings.from_meta(self["model"])

    @property
    def base_version(self) -> str | None:
        """The version this one's delta applies to (None: no delta; load the full weights)."""
        return self.get("base_version")

    @property
    def table_version(self) -> int | None:
        value = self.get("table_version")
        return None if value is None else int(value)


class ModelIntegrityError(ValueError):
    """A stored version does not match its manifest (or cannot be read)."""


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes on one machine (``flock`` on ``path``), for files that
    several processes change: the serving pointer here, the experiment file (serving.experiments)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the engine's code (with "+dirty" for local changes), else "unknown"."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- versions ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (with a manifest), oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / MANIFEST).is_file())

    def next_version(self) -> str:
        taken = [int(v[1:]) for v in self.versions() if v[1:].isdigit()]
        return f"v{(max(taken) + 1) if taken else 1:04d}"

    def path(self, version: str) -> Path:
        return self.versions_dir / version

    def publish(self, state: Mapping[str, torch.Tensor], meta: dict, extra_dirs: Mapping[str, Path] = (),
                extra_files: Mapping[str, Path] = (), version: str | None = None) -> str:
        """Write a new immutable version (weights + meta + extras), checksummed; returns its name."""
        version = version or self.next_version()
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.versions_dir))
        try:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(staging / WEIGHTS))
            _write_json(staging / META, {**meta, "version": version,
                                         "created_at": datetime.now(timezone.utc).isoformat()})
            for name, src in dict(extra_dirs).items():
                shutil.copytree(src, staging / name)
            for name, src in dict(extra_files).items():
                shutil.copy2(src, staging / name)
            files = sorted(p for p in staging.rglob("*") if p.is_file())
            _write_json(staging / MANIFEST, {"version": version, "files": {
                str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}})
            if self.path(version).exists():
                raise FileExistsError(f"model version {version} already exists in {self.versions_dir}: versions are immutable")
            os.rename(staging, self.path(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def publish_model(self, state: Mapping[str, torch.Tensor], meta: dict, catalogue: Mapping[str, int],
                      base: tuple[str, Mapping[str, torch.Tensor]] | None = None, delta_threshold: float = 0.0,
                      extra_dirs: Mapping[str, Path] = (), extra_files: Mapping[str, Path] = ()) -> tuple[str, dict[str, int], str | None]:
        """Publish a model version with its catalogue (item -> training count) and, given the
        ``base`` (version, weights) it replaces, a ``delta-from-<base>``. Returns (version, delta rows
        per table, why no delta could be made or None)."""
        from models import delta as model_delta

        target = self.next_version()
        meta = dict(meta)
        delta_rows: dict[str, int] = {}
        no_delta = None
        with tempfile.TemporaryDirectory() as tmp:
            dirs = dict(extra_dirs)
            files = {CATALOGUE: Path(tmp) / CATALOGUE, **dict(extra_files)}
            ranked = sorted(catalogue.items(), key=lambda kv: (-kv[1], kv[0]))
            files[CATALOGUE].write_text(json.dumps({"items": [k for k, _ in ranked], "counts": [int(v) for _, v in ranked]}))
            if base is not None:
                base_version, base_state = base
                try:
                    d = model_delta.compute_delta(base_state, state, delta_threshold)
                    model_delta.write_delta(Path(tmp) / "delta", d, base_state, base_version, target)
                    dirs[delta_dir_name(base_version)] = Path(tmp) / "delta"
                    delta_rows = d.row_counts
                    meta["base_version"] = base_version
                except model_delta.DeltaError as e:  # e.g. a new embedding size: servers load the full version
                    no_delta = str(e)
            version = self.publish(state, meta, extra_dirs=dirs, extra_files=files, version=target)
        return version, delta_rows, no_delta

    def catalogue(self, version: str) -> tuple[list[str], list[int]]:
        """The version's items, most trained-on first, and their training counts."""
        f = self.path(version) / CATALOGUE
        if not f.is_file():
            raise ModelIntegrityError(f"model version {version} has no {CATALOGUE} (published by an older engine): "
                                      "run `recsys retrain` to publish a servable version")
        raw = json.loads(f.read_text())
        return list(raw["items"]), list(raw["counts"])

    def verify(self, version: str, only: Iterable[str] | None = None) -> dict:
        """Check every file (or those under the ``only`` prefixes) against the manifest; returns the manifest."""
        where = self.path(version)
        if not (where / MANIFEST).is_file():
            raise ModelIntegrityError(f"model version {version} is missing or incomplete (no {MANIFEST} in {where}): "
                                      f"pick one of {self.versions() or 'none - run recsys retrain'}")
        try:
            manifest = json.loads((where / MANIFEST).read_text())
        except json.JSONDecodeError as e:
            raise ModelIntegrityError(f"{where / MANIFEST} is not valid JSON ({e}): the version is damaged; "
                                      "re-run `recsys retrain` or restore it from a backup") from e
        prefixes = None if only is None else tuple(only)
        for name, expected in manifest["files"].items():
            if prefixes is not None and not name.startswith(prefixes):
                continue
            f = where / name
            problem = None
            if not f.is_file():
                problem = "is missing"
            elif f.stat().st_size != expected["bytes"]:
                problem = f"is {f.stat().st_size} bytes, the manifest says {expected['bytes']} (truncated or replaced?)"
            elif sha256_file(f) != expected["sha256"]:
                problem = "does not match its sha256 in the manifest (corrupted or altered)"
            if problem:
                raise ModelIntegrityError(f"model version {version}: {name} {problem}: refusing to load it; "
                                          "re-run `recsys retrain` or restore the version from a backup")
        return manifest

    def meta(self, version: str) -> VersionMeta:
        return VersionMeta(json.loads((self.path(version) / META).read_text()))

    def delta_dir(self, version: str, base: str) -> Path:
        return self.path(version) / delta_dir_name(base)

    def has_delta(self, version: str, base: str) -> bool:
        from models.delta import MANIFEST_FILE

        return (self.delta_dir(version, base) / MANIFEST_FILE).is_file()

    def load(self, version: str) -> tuple[dict[str, torch.Tensor], VersionMeta]:
        """Verified weights and metadata of one version."""
        self.verify(version)
        try:
            state = load_file(str(self.path(version) / WEIGHTS))
        except (SafetensorError, OSError) as e:
            raise ModelIntegrityError(f"model version {version}: {WEIGHTS} cannot be read ({e}): "
                                      "re-run `recsys retrain` or restore it from a backup") from e
        return state, self.meta(version)

    # -- serving pointer --------------------------------------------------------------------
    def _serving(self) -> dict:
        f = self.root / SERVING
        return json.loads(f.read_text()) if f.is_file() else {"current": None, "history": []}

    def served(self) -> str | None:
        return self._serving()["current"]

    def history(self) -> list[str]:
        return list(self._serving()["history"])

    def _pointer_lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises changes of the serving pointer across processes (nightly job, learner, CLI)."""
        return exclusive_lock(self.root / ".serving.lock")

    def promote(self, version: str, only_if_serving: str | None = None) -> bool:
        """Point serving at ``version`` (kept in the history, so rollback can return). With
        ``only_if_serving``, only while that version is still the served one (compare and set: the
        streaming trainer must not undo a nightly promotion that happened while it trained);
        returns whether the pointer moved."""
        self.verify(version)
        with self._pointer_lock():
            s = self._serving()
            if only_if_serving is not None and s["current"] != only_if_serving:
                return False
            _write_json(self.root / SERVING, {"current": version, "history": [*s["history"], version],
                                              "updated_at": datetime.now(timezone.utc).isoformat()})
        return True

    def remove(self, version: str) -> None:
        """Delete a version that is not served (and drop it from the serving history)."""
        with self._pointer_lock():
            s = self._serving()
            if s["current"] == version:
                raise ValueError(f"{version} is being served: promote or roll back to another version before removing it")
            if version in s["history"]:
                _write_json(self.root / SERVING, {**s, "history": [v for v in s["history"] if v != version]})
        shutil.rmtree(self.path(version), ignore_errors=True)

    def rollback(self) -> str:
        """Serve the previously promoted version again; returns it."""
        with self._pointer_lock():
            s = self._serving()
            history = list(s["history"])
            if len(history) < 2:
                raise ValueError(f"nothing to roll back to: serving history is {history or 'empty'}; "
                                 "promote another version first (recsys retrain)")
            history.pop()
            previous = history[-1]
            self.verify(previous)
            _write_json(self.root / SERVING, {"current": previous, "history": history,
                                              "updated_at": datetime.now(timezone.utc).isoformat()})
        return previous
