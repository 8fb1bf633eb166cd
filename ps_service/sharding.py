"""How keys are spread over the server processes of a sharded parameter server.

Key ``k`` lives on shard ``k % n`` as local row ``k // n``. Hashed feature indices and
dense user or item ids are both spread evenly by a modulus (a range partition would
put all the frequent low ids on one shard), and the mapping needs no table of its own:
every client and server derives it from ``n`` alone.

A group of servers is addressed by one string, the shards' addresses in shard order
joined by commas (``"10.0.0.5:7000,10.0.0.6:7000"``), so a group passes through Lambda
events and Airflow connections like a single server's address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def group_addresses(address: str | tuple[str, int] | Sequence[str]) -> list[str | tuple[str, int]]:
    """The shard addresses of ``"h:p"``, ``"h1:p1,h2:p2"``, a ``(host, port)`` tuple or a list."""
    if isinstance(address, tuple):
        return [address]
    if isinstance(address, str):
        parts = [part.strip() for part in address.split(",")]
    else:
        parts = [str(part).strip() for part in address]
    if not parts or not all(parts):
        raise ValueError(
            f"parameter server address {address!r} is empty or has an empty entry; pass host:port, "
            "or the comma-separated addresses of a sharded group in the order it printed them"
        )
    return list(parts)


def local_rows(size: int, shard: int, shards: int) -> int:
    """How many of the keys 0..size-1 fall on ``shard``."""
    return max(0, (size - shard + shards - 1) // shards)


def global_keys(local: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """Inverse of the partition, for error messages that name the key the caller sent."""
    return local.astype(np.int64) * shards + shard


@dataclass(frozen=True)
class Split:
    """One request's keys cut into per-shard parts, and how to put replies back in order."""

    order: np.ndarray  # positions of the request's keys, grouped by shard
    bounds: np.ndarray  # part s is order[bounds[s]:bounds[s + 1]]
    local_keys: list[np.ndarray]

    def rows(self, values: np.ndarray) -> list[np.ndarray]:
        """The rows of ``values`` (one per key) that go with each part."""
        grouped = values[self.order]
        return [grouped[start:end] for start, end in zip(self.bounds[:-1], self.bounds[1:])]

    def gather(self, parts: Sequence[np.ndarray], width: int) -> np.ndarray:
        """Reassemble per-shard replies into one row per key, in the request's order."""
        out = np.empty((len(self.order), width), dtype=np.float32)
        if len(self.order):
            out[self.order] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out


def split_keys(keys: np.ndarray, shards: int) -> Split:
    """Group ``keys`` by shard with one stable sort: no Python loop over keys."""
    owner = keys % shards
    order = np.argsort(owner, kind="stable")
    bounds = np.zeros(shards + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=shards), out=bounds[1:])
    local = keys[order] // shards
    return Split(order, bounds, [local[start:end] for start, end in zip(bounds[:-1], bounds[1:])])
