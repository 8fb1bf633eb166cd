"""The shard format: examples in Parquet, and the manifest that is written last.

A sparse shard holds ``label: float32, indices: list<int32>, values: list<float32>``,
a ratings shard ``user: int32, item: int32, rating: float32``, with one row group per
block of rows that a worker reads at once. In memory the same rows are numpy arrays
(``SparseRows`` in CSR form, ``RatingRows``), which is what the model maths works on;
the conversion either way copies no row by itself.

The manifest (``<prefix>/_manifest.json``) says what the shards are and how they
were made. It is written after every shard, so its presence means "finished".
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirrus_airflow.storage import Storage, StorageError, join

SPARSE_SCHEMA = pa.schema(
    [("label", pa.float32()), ("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))]
)
# Parquet settings of the shards. Dictionary encoding, pyarrow's default, was nearly half
# of the writing time and pays only for the label: the hashed indices have too many
# distinct values (the file was larger with it), and on the values it saves about an
# eighth of the file for some 40% more writing time (and slower reading at every epoch).
# Min/max statistics are kept for the label only: those of hashed indices and scaled
# values never help to skip a row group. Large write batches (the default is 1024
# values) cut the per-batch cost of the list levels. LZ4 (written as Parquet's
# interoperable LZ4_RAW codec) gives files as small as Snappy's and decodes faster:
# every worker decodes every row group of its share at every epoch, beside its training
# loop, and Snappy took some 12% more of the worker's CPU.
_SHARD_COMPRESSION = "lz4"
_WRITE_OPTIONS = {
    "compression": _SHARD_COMPRESSION,
    "use_dictionary": ["label"],
    "write_statistics": ["label"],
    "write_batch_size": 1 << 16,
}
RATINGS_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("rating", pa.float32())])
MANIFEST_NAME = "_manifest.json"
MANIFEST_VERSION = 1


@dataclass
class SparseRows:
    """Rows of sparse examples in CSR form."""

    labels: np.ndarray  # float32 (n,)
    indptr: np.ndarray  # int64 (n + 1,)
    indices: np.ndarray  # int32 (nnz,)
    values: np.ndarray  # float32 (nnz,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.labels.nbytes + self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    def copy(self) -> SparseRows:
        """The rows in arrays of their own, exactly ``nbytes`` long: rows read from a shard are
        views into Arrow's buffers, which the Parquet reader may have sized with room to grow."""
        return SparseRows(self.labels.copy(), self.indptr.copy(), self.indices.copy(), self.values.copy())

    @classmethod
    def concat(cls, parts: list[SparseRows]) -> SparseRows:
        if not parts:
            return cls(np.empty(0, np.float32), np.zeros(1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32))
        offsets = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
        return cls(
            labels=np.concatenate([p.labels for p in parts]),
            indptr=np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)]),
            indices=np.concatenate([p.indices for p in parts]),
            values=np.concatenate([p.values for p in parts]),
        )

    def take(self, rows: np.ndarray) -> SparseRows:
        """A subset of rows, in the given order (vectorised gather of their entries)."""
        rows = np.asarray(rows, dtype=np.int64)
        k = self._width()
        if k is not None:
            # Every row has k entries: the entries are an (n, k) array, and a row gather does it.
            indptr = np.arange(0, k * len(rows) + 1, k, dtype=np.int64)
            n = len(self)
            indices = self.indices.reshape(n, k)[rows].reshape(-1)
            return SparseRows(self.labels[rows], indptr, indices, self.values.reshape(n, k)[rows].reshape(-1))
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        entry = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - starts, lengths)
        return SparseRows(self.labels[rows], indptr, self.indices[entry], self.values[entry])

    def _width(self) -> int | None:
        """The number of entries of every row, when all rows have the same (None otherwise)."""
        n = len(self)
        if not n or self.indptr[0] != 0:
            return None
        k = int(self.indptr[1])
        if len(self.indices) != k * n or len(self.values) != k * n or not (np.diff(self.indptr) == k).all():
            return None
        return k

    def slice(self, start: int, stop: int) -> SparseRows:
        lo, hi = self.indptr[start], self.indptr[stop]
        return SparseRows(
            self.labels[start:stop], self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.values[lo:hi]
        )

    def to_arrow(self) -> pa.Table:
        """The rows as a table, sharing the arrays' memory (built from buffers: ``pa.array``
        on a numpy array imports pandas, which a worker would pay for at its first shard)."""
        offsets = arrow_array(self.indptr, np.int32)
        return pa.Table.from_arrays(
            [
                arrow_array(self.labels, np.float32),
                pa.ListArray.from_arrays(offsets, arrow_array(self.indices, np.int32)),
                pa.ListArray.from_arrays(offsets, arrow_array(self.values, np.float32)),
            ],
            schema=SPARSE_SCHEMA,
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> SparseRows:
        if table.schema.remove_metadata() != SPARSE_SCHEMA:
            raise ValueError(f"not a sparse shard: schema is {table.schema}, expected {SPARSE_SCHEMA}")
        table = table.combine_chunks()
        indices = table.column("indices").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.int32()))
        values = table.column("values").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.float32()))
        base = numpy_view(indices.offsets, np.int32)
        lo, hi = int(base[0]), int(base[-1])
        return cls(
            labels=numpy_view(table.column("label"), np.float32),
            indptr=(base - lo).astype(np.int64),
            indices=numpy_view(indices.values, np.int32)[lo:hi],
            values=numpy_view(values.values, np.float32)[lo:hi],
        )


@dataclass
class RatingRows:
    """Ratings with dense user and item indices."""

    users: np.ndarray  # int32 (n,)
    items: np.ndarray  # int32 (n,)
    ratings: np.ndarray  # float32 (n,)

    def __len__(self) -> int:
        return len(self.ratings)

    @property
    def nbytes(self) -> int:
        return self.users.nbytes + self.items.nbytes + self.ratings.nbytes

    def copy(self) -> RatingRows:
        """The rows in arrays of their own (see ``SparseRows.copy``)."""
        return RatingRows(self.users.copy(), self.items.copy(), self.ratings.copy())

    def slice(self, start: int, stop: int) -> RatingRows:
        return RatingRows(self.users[start:stop], self.items[start:stop], self.ratings[start:stop])

    def take(self, rows: np.ndarray) -> RatingRows:
        return RatingRows(self.users[rows], self.items[rows], self.ratings[rows])

    @classmethod
    def concat(cls, parts: list[RatingRows]) -> RatingRows:
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) if parts else np.empty(0, dtype)
                     for name, dtype in (("users", np.int32), ("items", np.int32), ("ratings", np.float32))))

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_arrays([arrow_array(self.users, np.int32), arrow_array(self.items, np.int32),
                                     arrow_array(self.ratings, np.float32)], schema=RATINGS_SCHEMA)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> RatingRows:
        if table.schema.remove_metadata() != RATINGS_SCHEMA:
            raise ValueError(f"not a ratings shard: schema is {table.schema}, expected {RATINGS_SCHEMA}")
        table = table.combine_chunks()
        return cls(*(numpy_view(table.column(name), dtype)
                     for name, dtype in (("user", np.int32), ("item", np.int32), ("rating", np.float32))))


def rows_from_arrow(table: pa.Table) -> SparseRows | RatingRows:
    """A shard's rows as the model maths takes them, by the shard's schema."""
    if table.schema.remove_metadata() == RATINGS_SCHEMA:
        return RatingRows.from_arrow(table)
    return SparseRows.from_arrow(table)


def numpy_view(column: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A primitive column of one chunk (or none) as a numpy view of its buffer, no copy.

    Not ``to_numpy()``: pyarrow's imports pandas, about 0.3 s that a worker would pay at
    its first shard, on the critical path of a run's start.
    """
    array = column.chunk(0) if isinstance(column, pa.ChunkedArray) and column.num_chunks else column
    if isinstance(array, pa.ChunkedArray):  # no chunks: no rows
        return np.empty(0, dtype=dtype)
    if array.null_count:
        raise ValueError(f"a shard column of {array.type} holds {array.null_count} nulls; shards have none: "
                         "re-run preprocessing to rewrite them")
    item = np.dtype(dtype)
    view = np.frombuffer(array.buffers()[1], dtype=item, count=len(array), offset=array.offset * item.itemsize)
    view.flags.writeable = False  # Arrow's memory, perhaps shared: as read-only as to_numpy's views
    return view


def arrow_array(values: np.ndarray, dtype: type) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def write_shard(storage: Storage, uri: str, rows: SparseRows | pa.Table, *, row_group_rows: int) -> dict:
    """Write one shard (sparse rows, or a table of another shard schema such as ratings);
    returns its entry for the manifest: rows, row groups and bytes."""
    table = rows.to_arrow() if isinstance(rows, SparseRows) else rows
    options = _WRITE_OPTIONS if table.schema.equals(SPARSE_SCHEMA) else {"compression": _SHARD_COMPRESSION}
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, row_group_rows), **options)
    storage.write_bytes(uri, sink.getvalue())
    n = table.num_rows
    return {"rows": n, "row_groups": -(-n // max(1, row_group_rows)) if n else 0, "bytes": sink.tell()}


class ShardReader:
    """Random access to a shard's row groups: only the footer and the row groups
    asked for are read (ranged GETs on S3), so a worker holds one block at a time."""

    def __init__(self, storage: Storage, uri: str) -> None:
        self.uri = uri
        self._source = storage.open_input(uri)
        try:
            self._file = pq.ParquetFile(self._source)
        except (pa.ArrowInvalid, OSError) as exc:
            self._source.close()
            raise StorageError(f"{uri}: not a readable Parquet shard ({exc})") from None

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def num_row_groups(self) -> int:
        return self._file.num_row_groups

    def row_group(self, i: int) -> SparseRows | RatingRows:
        return rows_from_arrow(self._file.read_row_group(i))

    def read_all(self) -> SparseRows | RatingRows:
        return rows_from_arrow(self._file.read())

    def __iter__(self) -> Iterator[SparseRows | RatingRows]:
        for i in range(self.num_row_groups):
            yield self.row_group(i)


@dataclass
class Manifest:
    """What a preprocessing run produced: enough to train on it and to transform new data."""

    kind: str
    feature_dim: int
    shards: dict[str, list[dict]]  # "train"/"test" -> [{"path", "rows", "row_groups"}]
    transform: dict
    split: dict
    counts: dict
    source: dict = field(default_factory=dict)
    row_group_rows: int = 0
    label_stats: dict = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def shard_uris(self, prefix: str, split: str) -> list[str]:
        return [join(prefix, entry["path"]) for entry in self.shards.get(split, [])]

    def rows(self, split: str) -> int:
        return sum(entry["rows"] for entry in self.shards.get(split, []))

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "row_group_rows": self.row_group_rows,
            "shards": self.shards,
            "transform": self.transform,
            "split": self.split,
            "counts": self.counts,
            "label_stats": self.label_stats,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, doc: dict) -> Manifest:
        version = doc.get("version")
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version} is not supported (this package reads {MANIFEST_VERSION})")
        return cls(
            kind=doc["kind"],
            feature_dim=int(doc["feature_dim"]),
            shards=doc["shards"],
            transform=doc["transform"],
            split=doc["split"],
            counts=doc["counts"],
            source=doc.get("source", {}),
            row_group_rows=int(doc.get("row_group_rows", 0)),
            label_stats=doc.get("label_stats", {}),
            version=version,
        )


def manifest_uri(prefix: str) -> str:
    return join(prefix, MANIFEST_NAME)


def write_manifest(storage: Storage, prefix: str, manifest: Manifest) -> str:
    uri = manifest_uri(prefix)
    storage.write_text(uri, json.dumps(manifest.to_json(), indent=1, sort_keys=True))
    return uri


def read_manifest(storage: Storage, prefix: str) -> Manifest:
    uri = manifest_uri(prefix)
    try:
        text = storage.read_text(uri)
    except StorageError:
        raise StorageError(
            f"no {MANIFEST_NAME} under {prefix}: preprocessing has not finished there "
            "(or the data URI is wrong); run the preprocess task first"
        ) from None
    try:
        return Manifest.from_json(json.loads(text))
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{uri} is not a valid manifest: {exc}") from None
