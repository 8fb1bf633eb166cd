"""Minibatches from shards, with the next row group fetched while this one trains.

Cirrus hides storage latency by reading ahead; here one background thread fetches
and decodes the next row group while the worker computes on the current one. A
worker walks its work units (shard, row group) in its own seeded order each epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cirrus_airflow.shards import ShardReader, SparseRows
from cirrus_airflow.storage import Storage


@dataclass(frozen=True)
class Position:
    """Where a worker is: the epoch, the unit's place in that epoch's order, and the
    minibatch within the unit. A fresh invocation resumes from it."""

    epoch: int = 0
    unit: int = 0
    batch: int = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "unit": self.unit, "batch": self.batch}

    @classmethod
    def from_json(cls, doc: dict | None) -> Position:
        return cls(**doc) if doc else cls()


class UnitReader:
    """Reads (shard URI, row group) units, keeping the two most recent shards open
    (a worker's units come in runs from the same shard, and one is prefetched).
    ``requests`` counts what it asked of storage (an opened shard's footer, each row
    group), as S3 would bill it."""

    KEEP_OPEN = 2

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._readers: OrderedDict[str, ShardReader] = OrderedDict()
        self.requests = 0

    def read(self, unit: tuple[str, int]) -> SparseRows:
        uri, group = unit
        reader = self._readers.pop(uri, None)
        if reader is None:
            reader = ShardReader(self._storage, uri)
            self.requests += 1
        self.requests += 1
        self._readers[uri] = reader
        while len(self._readers) > self.KEEP_OPEN:
            self._readers.popitem(last=False)[1].close()
        return reader.row_group(group)


def epoch_order(units: list[tuple[str, int]], seed: int, worker: int, epoch: int) -> list[tuple[str, int]]:
    """This epoch's order: the worker's shards shuffled, and the row groups within
    each shard shuffled, so each shard is opened once per epoch."""
    rng = np.random.default_rng([seed, worker, epoch])
    by_shard: dict[str, list[tuple[str, int]]] = {}
    for unit in units:
        by_shard.setdefault(unit[0], []).append(unit)
    shards = list(by_shard.values())
    order: list[tuple[str, int]] = []
    for s in rng.permutation(len(shards)):
        order.extend(shards[s][i] for i in rng.permutation(len(shards[s])))
    return order


def minibatches(
    units: list[tuple[str, int]],
    *,
    reader: UnitReader,
    minibatch: int,
    epochs: int,
    seed: int,
    worker: int,
    start: Position,
) -> Iterator[tuple[Position, SparseRows]]:
    """Every minibatch from ``start`` on, each with the position that follows it."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        for epoch in range(start.epoch, epochs):
            order = epoch_order(units, seed, worker, epoch)
            first = start.unit if epoch == start.epoch else 0
            pending: Future | None = pool.submit(reader.read, order[first]) if first < len(order) else None
            for u in range(first, len(order)):
                rows = pending.result()
                pending = pool.submit(reader.read, order[u + 1]) if u + 1 < len(order) else None
                batch0 = start.batch if (epoch, u) == (start.epoch, start.unit) else 0
                count = -(-len(rows) // minibatch)
                for b in range(batch0, count):
                    following = Position(epoch, u, b + 1) if b + 1 < count else Position(epoch, u + 1, 0)
                    if following.unit == len(order):
                        following = Position(epoch + 1, 0, 0)
                    yield following, rows.slice(b * minibatch, min(len(rows), (b + 1) * minibatch))
