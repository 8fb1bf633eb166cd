"""The shuffle that makes every shard a fair sample of the whole input.

Inputs often come sorted (by day, by user, by label); a shard cut from one split
would inherit that order, and a worker reading it would see a biased stream. So the
second pass scatters each split's rows over the output shards by a seeded hash of the
row (a "piece" per split and shard, in Arrow IPC: cheap to write and read back), and a
third pass combines each shard's pieces, permutes them with a seeded generator and
writes the Parquet shard. Every input decides nothing but its own rows' shards, so a
rerun on the same input writes the same shards byte for byte.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from cirrus_airflow import hashing
from cirrus_airflow.shards import SPARSE_SCHEMA, SparseRows, write_shard
from cirrus_airflow.storage import Storage, join
from cirrus_airflow.transforms.workspace import WORK

_SHUFFLE_SALT = 0x5348


def shard_count(rows: int, shard_rows: int) -> int:
    """Shards of about ``shard_rows`` rows each (at least one when there are rows)."""
    return -(-rows // shard_rows) if rows else 0


def piece_uri(output: str, part: str, shard: int, key: str) -> str:
    return join(output, WORK, "pieces", part, f"shard-{shard:05d}", f"split-{key}.arrow")


def scatter(storage: Storage, rows: SparseRows | pa.Table, row_hash: np.ndarray, select: np.ndarray, *,
            shards: int, seed: int, output: str, part: str, key: str) -> dict[str, str]:
    """Write the selected rows of a block (positions ``select``) as one piece per shard
    (``key`` names the split and block); returns {shard: piece URI} of the pieces written."""
    if not len(select):
        return {}
    u = hashing.unit_interval(row_hash[select], hashing.derive_seed(seed, _SHUFFLE_SALT))
    shard = np.minimum((u * shards).astype(np.int64), shards - 1)
    by_shard = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[by_shard], np.arange(shards + 1))
    order = select[by_shard]
    table = _as_table(take(rows, order))
    written = {}
    for s in np.flatnonzero(np.diff(bounds)):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(lo, hi - lo))
        uri = piece_uri(output, part, int(s), key)
        storage.write_bytes(uri, sink.getvalue())
        written[str(int(s))] = uri
    return written


def combine(storage: Storage, pieces: list[str], uri: str, *, row_group_rows: int, seed: int) -> dict:
    """Join a shard's pieces in the given order, permute the rows and write the shard;
    returns its manifest entry (rows, row groups, bytes)."""
    tables = [pa.ipc.open_stream(storage.read_bytes(p)).read_all() for p in pieces]
    if tables[0].schema.equals(SPARSE_SCHEMA):  # each piece is one chunk: read without a copy, joined once
        rows = SparseRows.concat([SparseRows.from_arrow(t) for t in tables])
    else:
        rows = pa.concat_tables(tables)
    n = len(rows) if isinstance(rows, SparseRows) else rows.num_rows
    order = np.random.default_rng(hashing.derive_seed(seed, _SHUFFLE_SALT + 1)).permutation(n)
    return write_shard(storage, uri, take(rows, order), row_group_rows=row_group_rows)


def take(rows: SparseRows | pa.Table, order: np.ndarray) -> SparseRows | pa.Table:
    """Rows in the given order: sparse rows by a numpy gather (fast for the fixed-width rows of
    tabular data), other shard tables by Arrow."""
    return rows.take(order) if isinstance(rows, SparseRows) else rows.take(pa.array(order))


def _as_table(rows: SparseRows | pa.Table) -> pa.Table:
    return rows.to_arrow() if isinstance(rows, SparseRows) else rows
