"""Entity ids -> embedding rows (and item state shards). Unknown ids never crash: every string
lands in a bucket.

crc32 is stable across processes and machines (Python's hash() is not), so a row learned in
training is the row the server looks up.

>>> bucket("196", 1000) == bucket("196", 1000)
True
>>> 0 <= bucket("never-seen-before", 10) < 10
True
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch


def bucket(entity_id: str, buckets: int) -> int:
    return zlib.crc32(entity_id.encode()) % buckets


def bucket_tensor(entity_ids: Iterable[str], buckets: int) -> "torch.Tensor":
    import torch  # the stream job shards with bucket() and never needs torch

    return torch.tensor([zlib.crc32(e.encode()) % buckets for e in entity_ids], dtype=torch.long)
