"""Item categories as a ranker input: how much of what the user just did is in a candidate's categories.

Co-occurrence needs many users to say two items belong together; a catalogue's categories say it
on day one (a new film of the genre the user has been watching). The user's recent items, newest
weighted most (``decay ** position``, as the cross features), spread their weight evenly over their
categories; a candidate's ``category_affinity`` is the share of that weight that falls on its own
categories (0: none of them, 1: all the user's recent items are in its categories). Items without
categories, and candidates the catalogue does not know, read 0.

>>> cats = ItemCategories.from_pairs(["a", "b", "c", "d"], ["x|y", "y", None, "x"])
>>> cats.affinity(["a"], ["b", "c", "d", "new"], decay=0.5).ravel().tolist()
[0.5, 0.0, 0.5, 0.0]
>>> cats.affinity(["b", "d"], ["a", "b"], decay=0.5).ravel().astype(float).round(3).tolist()  # b (weight 1) is y, d (0.5) is x
[1.0, 0.667]
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

CATEGORY_NAME = "category_affinity"
CATEGORIES_FILE = "categories.npz"  # in a version's directory, beside the similarity table
SEPARATOR = "|"


class ItemCategories:
    """Each item's category codes (CSR: ``indptr``/``codes``) and the category names."""

    def __init__(self, ids: Sequence[str], indptr: np.ndarray, codes: np.ndarray, names: Sequence[str]) -> None:
        self.ids = np.asarray(ids, dtype=object)
        self.index = {item: n for n, item in enumerate(self.ids)}
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.names = list(names)

    @classmethod
    def from_pairs(cls, items: Sequence[str], categories: Sequence[str | None]) -> "ItemCategories":
        """From item ids and their category text (``"Action|Thriller"``; None or '' for none)."""
        code_of: dict[str, int] = {}
        indptr, codes = [0], []
        for text in categories:
            for name in dict.fromkeys(c.strip() for c in (text or "").split(SEPARATOR) if c.strip()):
                codes.append(code_of.setdefault(name, len(code_of)))
            indptr.append(len(codes))
        return cls([str(i) for i in items], np.asarray(indptr), np.asarray(codes), list(code_of))

    def __len__(self) -> int:
        return len(self.ids)

    def affinity(self, recent: Sequence[Hashable], candidates: Sequence[Hashable], decay: float = 0.8,
                 newest_n: int = 20) -> np.ndarray:
        """(len(candidates), 1) float32: the share of the recent items' category weight on each candidate."""
        out = np.zeros((len(candidates), 1), dtype=np.float32)
        profile = np.zeros(len(self.names))
        for p, item in enumerate(list(recent)[:newest_n]):
            n = self.index.get(item)
            if n is None or self.indptr[n] == self.indptr[n + 1]:
                continue
            mine = self.codes[self.indptr[n]:self.indptr[n + 1]]
            profile[mine] += decay ** p / len(mine)
        total = profile.sum()
        if not len(candidates) or total == 0:
            return out
        profile /= total
        rows = np.fromiter((self.index.get(c, -1) for c in candidates), dtype=np.int64, count=len(candidates))
        known = rows >= 0
        starts, ends = self.indptr[rows[known]], self.indptr[rows[known] + 1]
        lengths = ends - starts
        flat = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        per_row = np.repeat(np.arange(len(starts)), lengths)
        shares = np.bincount(per_row, weights=profile[self.codes[flat]], minlength=len(starts))
        out[known, 0] = np.minimum(shares, 1.0)
        return out

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CATEGORIES_FILE
        np.savez_compressed(path, ids=self.ids.astype(str), indptr=self.indptr, codes=self.codes,
                            names=np.asarray(self.names, dtype=str))
        return path

    @classmethod
    def load(cls, path: Path) -> "ItemCategories":
        try:
            with np.load(path, allow_pickle=False) as raw:
                return cls(raw["ids"].tolist(), raw["indptr"], raw["codes"], raw["names"].tolist())
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"{path}: not a readable categories file ({exc}); retrain to write a new version") from exc
