"""The shuffle that makes every shard a fair sample of the whole input.

Inputs often come sorted (by day, by user, by label); a shard cut from one split
would inherit that order, and a worker reading it would see a biased stream. So each
row gets a seeded slot ``u`` in [0, 1) from a hash of its content, and shard ``s`` of
``S`` holds the rows whose slot falls in ``[s/S, (s+1)/S)``.

A map task writes its block's rows as one *piece* per part (train or test): an Arrow
IPC file with the rows sorted by slot, in batches whose slot ranges are recorded in the
file's metadata. The shard count is chosen only once every row has been counted, and a
combine task then reads, from each piece, only the batches that overlap its slot range,
permutes the rows with a seeded generator and writes the Parquet shard. Pieces do not
multiply with the shards, and every input decides nothing but its own rows' slots, so
a rerun on the same input writes the same shards byte for byte.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from cirrus_airflow import hashing
from cirrus_airflow.shards import SPARSE_SCHEMA, SparseRows, arrow_array, write_shard
from cirrus_airflow.storage import Storage, join
from cirrus_airflow.transforms.workspace import WORK

_SHUFFLE_SALT = 0x5348
_SLOT = "_slot"
_BOUNDS = b"cirrus.slot_bounds"
# Rows per batch of a piece: a combine task reads whole batches and drops the rows of
# other shards, so smaller batches waste less reading, larger ones less metadata.
_BATCH_ROWS = 8192
# LZ4 makes pieces of tabular features some 2.6x smaller for about what the larger
# write would cost on a local disk; on S3 the smaller objects are what counts.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")

Finish = Callable[[SparseRows], SparseRows]


def shard_count(rows: int, shard_rows: int) -> int:
    """Shards of about ``shard_rows`` rows each (at least one when there are rows)."""
    return -(-rows // shard_rows) if rows else 0


def piece_uri(output: str, part: str, key: str) -> str:
    return join(output, WORK, "pieces", part, f"split-{key}.arrow")


def slots(row_hash: np.ndarray, seed: int) -> np.ndarray:
    """Each row's place in [0, 1) on the shuffle's line: the shards cut it in equal lengths."""
    return hashing.unit_interval(row_hash, hashing.derive_seed(seed, _SHUFFLE_SALT))


def shard_of(slot: np.ndarray, shards: int) -> np.ndarray:
    return np.minimum((slot * shards).astype(np.int64), shards - 1)


def scatter(storage: Storage, rows: SparseRows | pa.Table, row_hash: np.ndarray, select: np.ndarray, *,
            seed: int, uri: str) -> int:
    """Write the selected rows of a block (positions ``select``) as a piece at ``uri``,
    sorted by slot; returns the number of rows written (nothing is written for none)."""
    if not len(select):
        return 0
    slot = slots(row_hash[select], seed)
    order = np.argsort(slot, kind="stable")
    slot = slot[order]
    table = _as_table(take(rows, select[order])).append_column(_SLOT, arrow_array(slot, np.float64))
    starts = range(0, len(slot), _BATCH_ROWS)
    bounds = [[float(slot[lo]), float(slot[min(lo + _BATCH_ROWS, len(slot)) - 1])] for lo in starts]
    schema = table.schema.with_metadata({_BOUNDS: json.dumps(bounds).encode()})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, schema, options=_IPC_OPTIONS) as writer:
        for lo in starts:
            writer.write_batch(table.slice(lo, _BATCH_ROWS).to_batches(max_chunksize=_BATCH_ROWS)[0])
    storage.write_bytes(uri, sink.getvalue())
    return len(slot)


def combine(storage: Storage, pieces: list[str], uri: str, *, shard: int, shards: int, row_group_rows: int,
            seed: int, finish: Finish | None = None) -> dict:
    """Gather shard ``shard`` of ``shards`` from the pieces (in the given order), finish its
    rows (the fitted part of a transform applied after the shuffle), permute them and write
    the shard; returns its manifest entry (rows, row groups, bytes). A shard that got no
    rows (only possible when shards are a few rows each) is not written."""
    tables = [t for piece in pieces if (t := _read_shard_rows(storage, piece, shard, shards)) is not None]
    if not tables:
        return {"rows": 0, "row_groups": 0, "bytes": 0}
    slot = np.concatenate([t.column(_SLOT).to_numpy() for t in tables])
    tables = [t.drop_columns([_SLOT]).replace_schema_metadata(None) for t in tables]
    if tables[0].schema.equals(SPARSE_SCHEMA):
        rows = SparseRows.concat([SparseRows.from_arrow(t) for t in tables])
        if finish is not None:
            rows = finish(rows)
    else:
        rows = pa.concat_tables(tables)
    # Rows by slot first: their order then depends on the rows alone, not on how the input was
    # cut into splits and blocks (ties are rows with the same text, alike in every way).
    by_slot = np.argsort(slot, kind="stable")
    order = by_slot[np.random.default_rng(hashing.derive_seed(seed, _SHUFFLE_SALT + 1)).permutation(len(slot))]
    return write_shard(storage, uri, take(rows, order), row_group_rows=row_group_rows)


def _read_shard_rows(storage: Storage, piece: str, shard: int, shards: int) -> pa.Table | None:
    """The piece's rows of one shard, with their slots: only the batches whose slots overlap
    its range are read."""
    with storage.open_input(piece) as source:
        reader = pa.ipc.open_file(source)
        bounds = json.loads(reader.schema.metadata[_BOUNDS])
        batches = [reader.get_batch(i) for i, (lo, hi) in enumerate(bounds)
                   if shard_of(np.array([lo]), shards)[0] <= shard <= shard_of(np.array([hi]), shards)[0]]
    if not batches:
        return None
    table = pa.Table.from_batches(batches)
    # The rows are in slot order, so the shard's are one run of them.
    lo, hi = np.searchsorted(shard_of(table.column(_SLOT).to_numpy(), shards), [shard, shard + 1])
    return table.slice(lo, hi - lo).combine_chunks() if hi > lo else None


def take(rows: SparseRows | pa.Table, order: np.ndarray) -> SparseRows | pa.Table:
    """Rows in the given order: sparse rows by a numpy gather (fast for the fixed-width rows of
    tabular data), other shard tables by Arrow."""
    return rows.take(order) if isinstance(rows, SparseRows) else rows.take(pa.array(order))


def _as_table(rows: SparseRows | pa.Table) -> pa.Table:
    return rows.to_arrow() if isinstance(rows, SparseRows) else rows
