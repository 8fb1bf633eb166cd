"""Minibatches from shards, with the next row groups fetched while this one trains.

Cirrus hides storage latency by reading ahead. Here ``READ_AHEAD`` background threads
each fetch and decode one of the next row groups while the worker computes on the
current one: against S3 a row group takes tens of milliseconds to arrive, longer than
the worker needs to train on it, so a single read in flight leaves the worker waiting
(measured against a moto server: the in-loop rate fell to a third of the in-memory
process's); several in flight overlap their latencies. The reads run ahead across
epoch boundaries too, at a lower scheduling priority than training, so decoding fills
idle CPU rather than delaying a step. A worker walks its work units (shard, row group)
in its own seeded order each epoch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cirrus_airflow.shards import RatingRows, ShardReader, SparseRows
from cirrus_airflow.storage import Storage

READ_AHEAD = 3  # row groups in flight: enough to overlap S3's latency, a few MB of memory
READ_AHEAD_NICENESS = 10


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
    """Reads (shard URI, row group) units from several threads at once. Each thread keeps
    its two most recent shards open (a worker's units come in runs from the same shard),
    since a shard's file is read by seeking and cannot be shared between threads.
    ``requests`` counts what it asked of storage (an opened shard's footer, each row
    group), as S3 would bill it.

    Decoded units are kept, up to ``cache_bytes``, and a unit kept is not read again: a
    worker's share is read from storage and decoded once per invocation rather than once
    per epoch when it fits (decoding takes about a third of a step's CPU, and each read is
    a billed request). Units past the budget are not kept and nothing is evicted: in the
    cyclic order of epochs, evicting the oldest would drop each unit just before its
    next use."""

    KEEP_OPEN = 2

    def __init__(self, storage: Storage, *, cache_bytes: int = 0) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be at least 0, got {cache_bytes}")
        self._storage = storage
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[OrderedDict[str, ShardReader]] = []
        self._kept: dict[tuple[str, int], SparseRows | RatingRows] = {}
        self.cache_bytes = cache_bytes
        self.kept_bytes = 0
        self.requests = 0

    def read(self, unit: tuple[str, int]) -> SparseRows | RatingRows:
        with self._lock:
            rows = self._kept.get(unit)
        return self._keep(unit, self._read(unit)) if rows is None else rows

    def _keep(self, unit: tuple[str, int], rows: SparseRows | RatingRows) -> SparseRows | RatingRows:
        """The rows, kept (as a compact copy) if the budget has room for them."""
        with self._lock:
            if unit in self._kept or self.kept_bytes + rows.nbytes > self.cache_bytes:
                return self._kept.get(unit, rows)
            kept = self._kept[unit] = rows.copy()  # under the lock: only read-ahead threads wait
            self.kept_bytes += kept.nbytes
            return kept

    def _read(self, unit: tuple[str, int]) -> SparseRows | RatingRows:
        uri, group = unit
        readers = self._thread_readers()
        reader = readers.pop(uri, None)
        opened = reader is None
        if opened:
            reader = ShardReader(self._storage, uri)
        readers[uri] = reader
        while len(readers) > self.KEEP_OPEN:
            readers.popitem(last=False)[1].close()
        with self._lock:
            self.requests += 1 + opened
        return reader.row_group(group)

    def close(self) -> None:
        """Close every thread's open shards (once the reading threads are done) and let
        the kept units go."""
        with self._lock:
            self._kept.clear()
            self.kept_bytes = 0
            for readers in self._open:
                while readers:
                    readers.popitem()[1].close()

    def _thread_readers(self) -> OrderedDict[str, ShardReader]:
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = OrderedDict()
            with self._lock:
                self._open.append(readers)
        return readers


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


def _defer_to_training() -> None:
    """Lower this read-ahead thread's scheduling priority.

    Reads run ahead with slack, so a decode can wait for a free core; the training
    thread (and, where it shares the machine, the parameter server) cannot. Only Linux
    gives each thread its own priority; elsewhere this would renice the whole process.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + READ_AHEAD_NICENESS)


def minibatches(
    units: list[tuple[str, int]],
    *,
    reader: UnitReader,
    minibatch: int,
    epochs: int,
    seed: int,
    worker: int,
    start: Position,
    read_ahead: int = READ_AHEAD,
) -> Iterator[tuple[Position, SparseRows]]:
    """Every minibatch from ``start`` on, each with the position that follows it."""
    schedule = ((epoch, u, unit) for epoch in range(start.epoch, epochs)
                for u, unit in enumerate(epoch_order(units, seed, worker, epoch))
                if epoch > start.epoch or u >= start.unit)
    pool = ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="prefetch", initializer=_defer_to_training)
    pending: deque[tuple[int, int, Future]] = deque()

    def read_ahead_to_depth() -> None:
        while len(pending) < read_ahead and (item := next(schedule, None)) is not None:
            pending.append((item[0], item[1], pool.submit(reader.read, item[2])))

    try:
        read_ahead_to_depth()
        while pending:
            epoch, u, future = pending.popleft()
            rows = future.result()
            read_ahead_to_depth()
            batch0 = start.batch if (epoch, u) == (start.epoch, start.unit) else 0
            count = -(-len(rows) // minibatch)
            for b in range(batch0, count):
                following = Position(epoch, u, b + 1) if b + 1 < count else Position(epoch, u + 1, 0)
                if following.unit == len(units):
                    following = Position(epoch + 1, 0, 0)
                yield following, rows.slice(b * minibatch, min(len(rows), (b + 1) * minibatch))
    finally:  # a worker that stops early waits only for the reads already running
        pool.shutdown(wait=True, cancel_futures=True)
