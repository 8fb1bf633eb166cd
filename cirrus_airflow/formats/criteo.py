"""The Criteo click-log format: parse text blocks into rows and rejected rows.

Criteo's display-advertising data has a 0/1 label, 13 integer count features
(I1-I13) and 26 categorical features (C1-C26, hashed to hex strings); blanks are
missing values. The full data is tab-separated without a header; samples circulate
as CSV with a header row. Both are accepted, sniffed from the first line. The rows
become features in ``cirrus_airflow.transforms.tabular``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirrus_airflow import hashing
from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.formats.text import Fields, Lines, split_lines, split_uniform
from cirrus_airflow.rejects import BAD_LABEL, BAD_NUMBER, WRONG_FIELD_COUNT, RejectedRows

NUM_INTEGER = 13
NUM_CATEGORICAL = 26
NUM_FIELDS = 1 + NUM_INTEGER + NUM_CATEGORICAL
COLUMNS = ["label"] + [f"I{i}" for i in range(1, NUM_INTEGER + 1)] + [f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)]
_NUMBER = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


@dataclass(frozen=True)
class CriteoDialect:
    """How one Criteo file is written."""

    delimiter: str
    header: bool

    def to_json(self) -> dict:
        return {"delimiter": self.delimiter, "header": self.header}

    @classmethod
    def from_json(cls, doc: dict) -> CriteoDialect:
        return cls(delimiter=doc["delimiter"], header=bool(doc["header"]))


def sniff(head: bytes, source: str) -> CriteoDialect:
    """Tell tab-separated from CSV and find a header, from a file's first line."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace").lstrip("\ufeff")
    if not first.strip():
        raise ValueError(f"{source}: the first line is empty; expected a Criteo row or header")
    delimiter = "\t" if "\t" in first else ","
    fields = first.split(delimiter)
    if len(fields) != NUM_FIELDS:
        raise ValueError(
            f"{source}: the first line has {len(fields)} {'tab' if delimiter == chr(9) else 'comma'}-separated "
            f"fields; Criteo rows have {NUM_FIELDS} (label, I1-I13, C1-C26). Is this the right --format?"
        )
    header = fields[0].strip().lower() in ("label", "clicked", "click", "y")
    return CriteoDialect(delimiter=delimiter, header=header)


@dataclass
class CriteoRows:
    """Parsed, valid rows of a block; categorical values are already hashed."""

    labels: np.ndarray  # float32 (n,)
    integers: np.ndarray  # float64 (n, 13), NaN where missing
    categorical: np.ndarray  # uint64 (n, 26)
    lines: np.ndarray  # int64 (n,), 1-based line numbers in the source file
    hashes: np.ndarray | None = None  # uint64 (n,), see row_hash

    def __len__(self) -> int:
        return len(self.labels)

    def row_hash(self) -> np.ndarray:
        """A hash of each row's values (``hashing.hash_rows`` of the label and integers, then
        the categorical hashes), computed by ``parse_block``: the same row lands on the
        same side of the split wherever it is and however it is written (TSV or CSV, "1.0"
        for "1", or as a CSV/Parquet input with a schema of the same columns)."""
        if self.hashes is None:
            raise ValueError("row hashes are those of the parsed lines: get the rows from parse_block")
        return self.hashes


def parse_block(
    data: bytes,
    dialect: CriteoDialect,
    *,
    first_line: int,
    skip_header: bool,
    hash_seed: int,
) -> ParsedBlock:
    """Parse whole lines of Criteo text; bad rows are set aside with their reason."""
    uniform = split_uniform(data, dialect.delimiter.encode(), NUM_FIELDS)
    lines = uniform[0] if uniform else split_lines(data)
    n = len(lines)
    blank = lines.blank()
    keep = ~blank
    if skip_header and n:
        keep[0] = False
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    rejected = RejectedRows()

    if uniform:
        # Every line has its 40 fields: only the header and blank lines are left out.
        candidates = np.flatnonzero(keep)
        fields = uniform[1]
        if len(candidates) < n:
            fields = fields.take(candidates)
    else:
        delimiters = lines.delimiters(dialect.delimiter.encode())
        wrong = keep & (delimiters.counts != NUM_FIELDS)
        _reject(rejected, lines, line_numbers, np.flatnonzero(wrong), WRONG_FIELD_COUNT)
        candidates = np.flatnonzero(keep & ~wrong)
        fields = lines.fields(delimiters, candidates, NUM_FIELDS)

    labels = _parse_numeric_columns(fields, slice(0, 1))[:, 0]
    bad = np.isnan(labels) | ~np.isin(labels, (0.0, 1.0))
    _reject(rejected, lines, line_numbers, candidates[bad], BAD_LABEL)

    integers = _parse_numeric_columns(fields, slice(1, 1 + NUM_INTEGER))
    infinite = np.isinf(integers)
    if infinite.any():  # a check of the whole array first: row by row is slow, and rarely needed
        bad_number = ~bad & infinite.any(axis=1)
        _reject(rejected, lines, line_numbers, candidates[bad_number], BAD_NUMBER)
        bad |= bad_number

    if bad.any():
        good = np.flatnonzero(~bad)
        fields, labels, integers, candidates = fields.take(good), labels[good], integers[good], candidates[good]
    cat = slice(1 + NUM_INTEGER, NUM_FIELDS)
    seeds = [hashing.derive_seed(hash_seed, j) for j in range(NUM_CATEGORICAL)]
    starts = fields.starts[cat]
    categorical = hashing.hash_span_columns(fields.data, starts.T, (fields.ends[cat] - starts).T, seeds)
    hashes = hashing.hash_rows(np.column_stack([labels, integers]), categorical)

    rows = CriteoRows(
        labels=labels.astype(np.float32),
        integers=integers,
        categorical=categorical,
        lines=line_numbers[candidates],
        hashes=hashes,
    )
    return ParsedBlock(rows=rows, rejected=rejected, lines=n, blank=int(blank.sum()))


def _parse_numeric_columns(fields: Fields, columns: slice) -> np.ndarray:
    """Some of the label and integer columns as (rows, k) float64, as ``_parse_numbers``
    reads them (the label, column 0, may not be missing).

    Plain integers (all of Criteo's values, as a rule) are read straight from the block's
    bytes; only the other values, if any, are copied out for Arrow.
    """
    numbers, unparsed = fields.small_integers(columns)
    if not unparsed.any():
        return numbers
    for j in np.flatnonzero(unparsed.any(axis=0)):
        rows, column = np.flatnonzero(unparsed[:, j]), columns.start + int(j)
        numbers[rows, j] = _parse_numbers(fields.column(column, rows), allow_missing=column > 0)
    return numbers


def _parse_numbers(values: pa.Array, *, allow_missing: bool) -> np.ndarray:
    """Numbers of a binary column as float64: NaN where blank, +inf where unparsable.

    The fast path casts the whole column at once; only a column that holds a bad
    value pays for the regular expression that finds it.
    """
    blank = pc.equal(pc.binary_length(values), 0)
    present = pc.if_else(blank, pa.scalar(None, values.type), values)
    try:
        parsed = pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(present, _NUMBER), True)
        parsed = pc.cast(pc.if_else(ok, present, pa.scalar(None, values.type)), pa.float64())
        parsed = parsed.to_numpy(zero_copy_only=False)
        parsed[~ok.to_numpy(zero_copy_only=False)] = np.inf
    parsed = np.where(np.isfinite(parsed) | np.isnan(parsed), parsed, np.inf)
    if not allow_missing:
        parsed = np.where(np.isnan(parsed), np.inf, parsed)
    return parsed


def _reject(rejected: RejectedRows, lines: Lines, numbers: np.ndarray, which: np.ndarray, reason: str) -> None:
    if which.size:
        rejected.add(numbers[which], reason, [lines.text(int(i)) for i in which])
