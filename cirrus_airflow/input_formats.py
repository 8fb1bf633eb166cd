"""What each ``--format`` means: how its text is sniffed and parsed, and which transform fits it.

The driver and the map tasks only talk to ``InputFormat``; a format's options (the
hash seed of categorical columns, the columns of a ratings file, the largest LIBSVM
index) travel in the Lambda event as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cirrus_airflow.formats import ParsedBlock, columnar, criteo, libsvm, ratings
from cirrus_airflow.rejects import RejectedRows
from cirrus_airflow.storage import Storage
from cirrus_airflow.transforms.ratings import RatingsTransform
from cirrus_airflow.transforms.sparse import SparseTransform
from cirrus_airflow.transforms.tabular import TabularRows, TabularTransform

FORMATS = ("criteo", "libsvm", "ratings", "csv", "parquet")
SCHEMA_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class InputFormat:
    """Text formats: ``sniff(head, uri)`` tells a file's dialect (JSON) from its first
    bytes; ``parse(data, dialect, first_line=, skip_header=)`` turns whole lines into rows.
    Parquet: ``describe(storage, uri)`` reads a file's row groups from its footer,
    ``read_group(storage, uri, g)`` one of them, and ``parse(table, first_line=)`` turns it
    into rows."""

    name: str
    options: dict
    sniff: Callable[[bytes, str], dict] | None
    parse: Callable[..., ParsedBlock]
    describe: Callable[[Storage, str], dict] | None = None
    read_group: Callable[[Storage, str, int], pa.Table] | None = None

    @property
    def row_groups(self) -> bool:
        return self.describe is not None


def input_format(name: str, options: dict | None = None) -> InputFormat:
    options = dict(options or {})
    if name in SCHEMA_FORMATS:
        if not options.get("schema"):
            raise ValueError(f"the {name} format needs a schema: the label column and the numeric and "
                             "categorical columns, e.g. {'label': 'clicked', 'numeric': ['price'], "
                             "'categorical': ['country']}")
        schema = columnar.ColumnSchema.from_json(options["schema"])
        seed = int(options.get("hash_seed", 0))
        if name == "csv":
            return InputFormat(name, options, lambda head, uri: columnar.sniff_csv(head, uri, schema),
                               _csv_parser(schema, seed))
        return InputFormat(name, options, None, _parquet_parser(schema, seed),
                           describe=lambda storage, uri: columnar.describe_parquet(storage, uri, schema),
                           read_group=lambda storage, uri, g: columnar.read_row_group(storage, uri, g, schema))
    if name == "criteo":
        return InputFormat(name, options, _criteo_sniff,
                           _criteo_parser(int(options.get("hash_seed", 0))))
    if name == "libsvm":
        return InputFormat(name, options, lambda head, uri: libsvm.sniff(head, uri).to_json(),
                           _libsvm_parser(options.get("max_index")))
    if name == "ratings":
        return InputFormat(name, options, _ratings_sniff(options), _ratings_parse)
    raise ValueError(f"format must be one of {FORMATS}, got {name!r}")


def transform_from_json(doc: dict) -> TabularTransform | SparseTransform | RatingsTransform:
    family = doc.get("family")
    if family == "tabular":
        return TabularTransform.from_json(doc)
    if family == "libsvm":
        return SparseTransform.from_json(doc)
    if family == "ratings":
        return RatingsTransform.from_json(doc)
    raise ValueError(f"unknown transform family {family!r} (tabular, libsvm, ratings)")


def schema_transform(schema: dict, **params: Any) -> TabularTransform:
    parsed = columnar.ColumnSchema.from_json(schema)
    return TabularTransform(numeric_columns=parsed.numeric, categorical_columns=parsed.categorical, **params)


def criteo_transform(**params: Any) -> TabularTransform:
    return TabularTransform(
        numeric_columns=tuple(criteo.COLUMNS[1 : 1 + criteo.NUM_INTEGER]),
        categorical_columns=tuple(criteo.COLUMNS[1 + criteo.NUM_INTEGER :]),
        **params,
    )


def _criteo_sniff(head: bytes, uri: str) -> dict:
    return criteo.sniff(head, uri).to_json()


def _criteo_parser(hash_seed: int) -> Callable[..., ParsedBlock]:
    def parse(data: bytes, dialect: dict, *, first_line: int, skip_header: bool) -> ParsedBlock:
        block = criteo.parse_block(data, criteo.CriteoDialect.from_json(dialect), first_line=first_line,
                                   skip_header=skip_header, hash_seed=hash_seed)
        r = block.rows
        rows = TabularRows(labels=r.labels, numeric=r.integers, categorical=r.categorical, lines=r.lines,
                           hashes=r.row_hash())
        return ParsedBlock(rows, block.rejected, block.lines, block.blank)

    return parse


def _csv_parser(schema: columnar.ColumnSchema, hash_seed: int) -> Callable[..., ParsedBlock]:
    def parse(data: bytes, dialect: dict, *, first_line: int, skip_header: bool) -> ParsedBlock:
        rows, rejected, lines, blank = columnar.parse_csv(data, dialect, schema, first_line=first_line,
                                                          skip_header=skip_header, hash_seed=hash_seed)
        return ParsedBlock(rows, rejected, lines, blank)

    return parse


def _parquet_parser(schema: columnar.ColumnSchema, hash_seed: int) -> Callable[..., ParsedBlock]:
    def parse(table: pa.Table, *, first_line: int) -> ParsedBlock:
        rejected = RejectedRows()
        numbers = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
        rows = columnar.table_rows(table, schema, numbers=numbers, hash_seed=hash_seed, rejected=rejected)
        return ParsedBlock(rows, rejected, table.num_rows, 0)

    return parse


def _libsvm_parser(max_index: int | None) -> Callable[..., ParsedBlock]:
    def parse(data: bytes, dialect: dict, *, first_line: int, skip_header: bool) -> ParsedBlock:
        return libsvm.parse_block(data, first_line=first_line, max_index=max_index)

    return parse


def _ratings_sniff(options: dict) -> Callable[[bytes, str], dict]:
    columns = options.get("columns")

    def sniff(head: bytes, uri: str) -> dict:
        return ratings.sniff(head, uri, columns=tuple(columns) if columns else None).to_json()

    return sniff


def _ratings_parse(data: bytes, dialect: dict, *, first_line: int, skip_header: bool) -> ParsedBlock:
    return ratings.parse_block(data, ratings.RatingsDialect.from_json(dialect), first_line=first_line,
                               skip_header=skip_header)
