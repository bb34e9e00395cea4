"""Catalogue metadata: item attributes from a file into the registry's ``item_attributes`` view.

A recommendation is read by people, so an item needs a name; and a category is a signal the
events alone only learn slowly. Files:

- MovieLens ``u.item`` (found by its name): ``id|title|release|video release|url|19 genre flags``,
  latin-1; the genres (named by ``u.genre`` next to it) become the category, ``Action|Thriller``;
- any layout ``streaming.log_files`` reads (CSV/TSV with a header or by position, JSON lines,
  Parquet, gzip), with ``columns`` mapping ``item_id``, ``title`` and ``category``; every other
  mapped field (``year=release_date``) goes into ``attributes`` (JSON).

:func:`load_catalogue` writes the rows online (Redis, Feast's layout, where the API reads titles)
and offline (the view's Parquet source, stamped at the epoch so every point-in-time join sees
them). Loading again overwrites the items the file lists.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "items.csv"
>>> _ = path.write_text("sku,name,cat,brand\\n42,Red shoe,shoes,Acme\\n")
>>> read_catalogue(path, {"item_id": "sku", "title": "name", "category": "cat", "brand": "brand"}).frame().iloc[0].to_dict()
{'item_id': '42', 'title': 'Red shoe', 'category': 'shoes', 'attributes': '{"brand":"Acme"}'}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd

from features import names
from features.definitions import TIMESTAMP_FIELD, snapshot_table
from features.online_writer import OnlineWriter
from infra.settings import Settings
from models.categories import SEPARATOR
from streaming.log_files import read_rows
from streaming.replay import parse_columns

ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


@dataclass
class Catalogue:
    """Item attributes in file order; ``rejected``: rows without an item id, with the reason."""

    items: list[str] = field(default_factory=list)
    titles: list[str | None] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def add(self, item_id: str, title: str | None, category: str | None, attributes: dict[str, str]) -> None:
        self.items.append(item_id)
        self.titles.append(title or None)
        self.categories.append(category or None)
        self.attributes.append(attributes)

    def frame(self) -> pd.DataFrame:
        """One row per item (the last row of an item wins, as a reload would)."""
        frame = pd.DataFrame({names.ITEM_KEY: self.items, "title": self.titles, "category": self.categories,
                              "attributes": [orjson.dumps(a).decode() if a else None for a in self.attributes]})
        return frame.drop_duplicates(names.ITEM_KEY, keep="last").reset_index(drop=True)


def catalogue_columns(spec: str | None) -> dict[str, str] | None:
    """``--columns item_id=sku,title=name,category=cat,...`` (any other field is kept) -> mapping."""
    return parse_columns(spec, required=("item_id",), fields=None) if spec else None


def shown_categories(category: str | None) -> str:
    """A category text as people read it: ``Action, Thriller``."""
    return (category or "").replace(SEPARATOR, ", ")


def read_catalogue(path: str | Path, columns: dict[str, str] | None = None, delimiter: str | None = None,
                   progress: bool = False) -> Catalogue:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass u.item (../shared/data/ml-100k/u.item) or a file with --columns")
    if columns is None:
        if path.name != "u.item":
            raise ValueError(f"{path}: say which columns hold what, e.g. --columns item_id=sku,title=name,category=cat "
                             "(only MovieLens u.item is read without a mapping)")
        return _movielens_items(path)
    if "item_id" not in columns:
        raise ValueError("--columns must map item_id (and usually title and category)")
    catalogue = Catalogue()
    for n, row in read_rows(path, columns, delimiter, progress):
        if isinstance(row, str) or not row.get("item_id"):
            catalogue.rejected.append((n, "no item id in this row"))
            continue
        extra = {k: v for k, v in row.items() if k not in ("item_id", "title", "category") and v not in (None, "")}
        catalogue.add(row["item_id"], row.get("title"), row.get("category"), extra)
    return catalogue


def _movielens_items(path: Path) -> Catalogue:
    genre_file = path.with_name("u.genre")
    genres = ML_GENRES
    if genre_file.is_file():
        pairs = [line.rsplit("|", 1) for line in genre_file.read_text(encoding="latin-1").splitlines() if "|" in line]
        genres = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
    catalogue = Catalogue()
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        parts = line.split("|")
        if len(parts) < 5 + len(genres) or not parts[0]:
            if line.strip():
                catalogue.rejected.append((n, f"expected {5 + len(genres)} '|'-separated fields"))
            continue
        flags = parts[5:5 + len(genres)]
        category = SEPARATOR.join(g for g, f in zip(genres, flags) if f == "1")
        attributes = {k: v for k, v in (("release_date", parts[2]), ("url", parts[4])) if v}
        catalogue.add(parts[0], parts[1], category, attributes)
    return catalogue


def load_catalogue(settings: Settings, catalogue: Catalogue, online: bool = True) -> int:
    """Write the catalogue online (unless ``online=False``: training and replays read only the
    offline copy) and offline; returns the items written. Needs the registry to have the view
    (`recsys features apply`, which `recsys catalogue load` runs first)."""
    frame = catalogue.frame()
    if online:
        _write_online(settings, frame)
    offline = frame.assign(**{TIMESTAMP_FIELD: pd.Timestamp(0, unit="ms", tz="UTC")})
    path = snapshot_table(settings, names.ITEM_ATTRIBUTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    offline.to_parquet(tmp, index=False)
    tmp.replace(path)  # readers see the old table or the new one, never half of one
    return len(frame)


def _write_online(settings: Settings, frame: pd.DataFrame) -> None:
    writer = OnlineWriter(settings)
    if names.ITEM_ATTRIBUTES not in writer.views:
        raise RuntimeError(f"the feature registry has no {names.ITEM_ATTRIBUTES} view: run `recsys features apply`")
    writer.ping()
    now_ms = int(time.time() * 1000)
    fields = names.attribute_fields()
    for row in frame.itertuples(index=False):
        values = {f: getattr(row, f) for f in fields}
        writer.stage(names.ITEM_ATTRIBUTES, getattr(row, names.ITEM_KEY), lambda v=values: v, now_ms)
        if writer.pending_rows >= 5000:
            writer.flush()
    writer.flush()


def loaded_catalogue(settings: Settings) -> pd.DataFrame | None:
    """The catalogue as last loaded (the offline copy), or None: for the replay and the CLI."""
    path = snapshot_table(settings, names.ITEM_ATTRIBUTES)
    return pd.read_parquet(path) if path.is_file() else None
