"""Tabular inputs with a user-given schema: which column is the label, which are
numeric and which are categorical. The rows of a block become the same
``TabularRows`` that the Criteo parser makes, so the same transform applies.

CSV files need a header row naming the columns; the delimiter (comma, tab, semicolon
or bar) is sniffed from it, fields may be quoted (a quoted field may hold the
delimiter, not a newline), and extra columns are ignored. Parquet files are read by
row group (the unit of work and of memory: a split is a run of row groups, a block
is one).

Labels are 0/1 (or booleans); numeric columns may be any numeric type, or text that
holds numbers; categorical columns any type, hashed by their text, a null as the
empty string (like a blank Criteo field). Row numbers (1-based, within the file)
stand in for line numbers in the rejected-rows files.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cirrus_airflow import hashing
from cirrus_airflow.formats.text import split_lines
from cirrus_airflow.rejects import BAD_LABEL, BAD_NUMBER, WRONG_FIELD_COUNT, RejectedRows
from cirrus_airflow.storage import Storage, StorageError
from cirrus_airflow.transforms.tabular import TabularRows



@dataclass(frozen=True)
class ColumnSchema:
    """The columns a tabular input is read as."""

    label: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [self.label, *self.numeric, *self.categorical]
        if not self.label:
            raise ValueError("the schema needs a label column: give label=NAME")
        if not self.numeric and not self.categorical:
            raise ValueError("the schema needs at least one numeric or categorical column")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"column {repeated[0]!r} is given more than once in the schema")

    @property
    def columns(self) -> list[str]:
        return [self.label, *self.numeric, *self.categorical]

    def to_json(self) -> dict:
        return {"label": self.label, "numeric": list(self.numeric), "categorical": list(self.categorical)}

    @classmethod
    def from_json(cls, doc: dict) -> ColumnSchema:
        unknown = sorted(set(doc) - {"label", "numeric", "categorical"})
        if unknown:
            raise ValueError(f"unknown schema keys {unknown}: a schema has label, numeric and categorical")
        return cls(label=doc.get("label", ""), numeric=tuple(doc.get("numeric", ())),
                   categorical=tuple(doc.get("categorical", ())))

    def check(self, available: list[str], source: str) -> None:
        missing = [c for c in self.columns if c not in available]
        if missing:
            raise ValueError(f"{source}: no column {', '.join(map(repr, missing))}; its columns are "
                             f"{', '.join(available)}")


def sniff_csv(head: bytes, source: str, schema: ColumnSchema) -> dict:
    """The delimiter and column names of a CSV file, from its header row."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace").lstrip("\ufeff")
    delimiter = max(",\t;|", key=first.count)
    if not first.strip() or not first.count(delimiter):
        raise ValueError(f"{source}: the first line should be a header naming the columns, got {first[:80]!r}")
    columns = [c.strip() for c in _split_header(first, delimiter)]
    try:
        schema.check(columns, source)
    except ValueError as exc:
        raise ValueError(f"{exc}. Is the first line its header, and this the right --format?") from None
    return {"delimiter": delimiter, "columns": columns, "header": True}


def _split_header(line: str, delimiter: str) -> list[str]:
    """The header's names, unquoted as CSV says."""
    return pacsv.read_csv(io.BytesIO(line.encode() + b"\n"), parse_options=pacsv.ParseOptions(delimiter=delimiter)
                          ).column_names


def parse_csv(data: bytes, dialect: dict, schema: ColumnSchema, *, first_line: int, skip_header: bool,
              hash_seed: int) -> tuple[TabularRows, RejectedRows, int, int]:
    """Whole lines of a CSV file as rows: (rows, rejected, lines, blank lines)."""
    lines = split_lines(data)
    length = lines.ends - lines.starts
    nonempty = np.flatnonzero(length > 0)  # pyarrow numbers these rows, from 1
    invalid: list[tuple[int, int]] = []

    def invalid_row(row: pacsv.InvalidRow) -> str:
        invalid.append((row.number, row.actual_columns))
        return "skip"

    columns = dialect["columns"]
    table = pacsv.read_csv(
        io.BytesIO(lines.data.tobytes()),
        read_options=pacsv.ReadOptions(column_names=columns, skip_rows=int(skip_header), use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=dialect["delimiter"], invalid_row_handler=invalid_row),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                             include_columns=schema.columns, strings_can_be_null=False),
    ) if len(nonempty) > int(skip_header) else pa.table({c: pa.array([], pa.string()) for c in schema.columns})
    bad = np.array([number - 1 for number, _ in invalid], dtype=np.int64)
    whitespace = np.array([lines.text(int(nonempty[i])).strip() == "" for i in bad], dtype=bool)
    rejected = RejectedRows()
    wrong = nonempty[bad[~whitespace]] if bad.size else np.empty(0, np.int64)
    if wrong.size:
        rejected.add(first_line + wrong, WRONG_FIELD_COUNT, [lines.text(int(i)) for i in wrong])
    keep = np.ones(len(nonempty), dtype=bool)
    keep[bad] = False
    if skip_header and len(nonempty):
        keep[0] = False
    kept = nonempty[keep]
    rows = table_rows(table, schema, numbers=first_line + kept, hash_seed=hash_seed, rejected=rejected,
                      texts=lambda which: [lines.text(int(i)) for i in kept[which]])
    blank = len(lines) - len(nonempty) + int(whitespace.sum())
    return rows, rejected, len(lines), blank


def describe_parquet(storage: Storage, uri: str, schema: ColumnSchema) -> dict:
    """A Parquet file's row groups (rows and compressed bytes each), from its footer only."""
    with storage.open_input(uri) as source:
        try:
            meta = pq.ParquetFile(source).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{uri}: not a readable Parquet file ({exc})") from None
        schema.check(meta.schema.names, uri)
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    return {"rows": [g.num_rows for g in groups], "bytes": [g.total_byte_size for g in groups]}


def read_row_group(storage: Storage, uri: str, group: int, schema: ColumnSchema) -> pa.Table:
    with storage.open_input(uri) as source:
        return pq.ParquetFile(source).read_row_group(group, columns=schema.columns)


def table_rows(table: pa.Table, schema: ColumnSchema, *, numbers: np.ndarray, hash_seed: int,
               rejected: RejectedRows, texts: Callable[[np.ndarray], list[str]] | None = None) -> TabularRows:
    """A block of a tabular input as rows (``numbers``: each row's line or row number).
    Rows with a bad label or number join ``rejected``, as ``texts(positions)`` says (by
    default the row as JSON)."""
    if texts is None:
        def texts(which: np.ndarray) -> list[str]:
            return [json.dumps(r, default=str, sort_keys=True) for r in table.take(pa.array(which)).to_pylist()]
    n = table.num_rows
    labels = _numbers(table.column(schema.label))
    labels = np.where(np.isin(labels, (0.0, 1.0)), labels, np.nan)
    numeric = (np.column_stack([_numbers(table.column(c)) for c in schema.numeric]) if schema.numeric
               else np.empty((n, 0)))
    bad_label = np.isnan(labels)
    bad_number = ~bad_label & np.isinf(numeric).any(axis=1)
    for mask, reason in ((bad_label, BAD_LABEL), (bad_number, BAD_NUMBER)):
        which = np.flatnonzero(mask)
        if which.size:
            rejected.add(numbers[which], reason, texts(which))
    good = np.flatnonzero(~(bad_label | bad_number))
    categorical = np.empty((len(good), len(schema.categorical)), dtype=np.uint64)
    for j, name in enumerate(schema.categorical):
        text = pc.cast(table.column(name).take(pa.array(good)), pa.string())
        categorical[:, j] = hashing.hash_strings(text, hashing.derive_seed(hash_seed, j))
    numeric, labels = numeric[good], labels[good].astype(np.float32)
    hashes = hashing.hash_rows(np.column_stack([labels, numeric]), categorical)
    return TabularRows(labels, numeric, categorical, numbers[good], hashes)


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    """A column as float64: NaN where null, +inf where the value is not a finite number."""
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type) or pa.types.is_floating(column.type) \
            or pa.types.is_decimal(column.type):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_binary(column.type):
        values = _text_numbers(pc.cast(column, pa.string()))
    else:
        raise ValueError(f"a numeric or label column must hold numbers or text, not {column.type}")
    return np.where(np.isnan(values) | np.isfinite(values), values, np.inf)


def _text_numbers(text: pa.Array) -> np.ndarray:
    trimmed = pc.utf8_trim_whitespace(text)
    blank = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), True)
    present = pc.if_else(blank, pa.scalar(None, pa.string()), trimmed)
    try:
        return pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(present, r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"),
                          True)
        values = pc.cast(pc.if_else(ok, present, pa.scalar(None, pa.string())), pa.float64())
        values = values.to_numpy(zero_copy_only=False)
        values[~ok.to_numpy(zero_copy_only=False)] = np.inf
        return values
