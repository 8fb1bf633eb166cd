"""The Criteo click-log format: parse text blocks and turn rows into sparse features.

Criteo's display-advertising data has a 0/1 label, 13 integer count features
(I1-I13) and 26 categorical features (C1-C26, hashed to hex strings); blanks are
missing values. The full data is tab-separated without a header; samples circulate
as CSV with a header row. Both are accepted, sniffed from the first line.

Features (the layout is recorded in the manifest so prediction can redo it):
    [0, 13)                 the integer features, log(1+x)-transformed and scaled
    [13, 26)                one indicator per integer feature: 1 where it is missing
    [26, 26 + 2**hash_bits) the categorical values, each hashed with its column
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirrus_airflow import hashing
from cirrus_airflow.formats.text import Lines, split_lines
from cirrus_airflow.numeric import ColumnStats, log_counts, normalize
from cirrus_airflow.rejects import BAD_LABEL, BAD_NUMBER, WRONG_FIELD_COUNT, RejectedRows
from cirrus_airflow.shards import SparseRows

NUM_INTEGER = 13
NUM_CATEGORICAL = 26
NUM_FIELDS = 1 + NUM_INTEGER + NUM_CATEGORICAL
COLUMNS = ["label"] + [f"I{i}" for i in range(1, NUM_INTEGER + 1)] + [f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)]
HASHED_OFFSET = 2 * NUM_INTEGER
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

    def __len__(self) -> int:
        return len(self.labels)

    def row_hash(self) -> np.ndarray:
        """A hash of each row's content, the same wherever and whenever it is parsed."""
        numbers = hashing.hash_float64(np.column_stack([self.labels.astype(np.float64), self.integers]), 0)
        return hashing.combine_columns(
            [numbers[:, j] for j in range(numbers.shape[1])]
            + [self.categorical[:, j] for j in range(NUM_CATEGORICAL)]
        )


@dataclass
class ParsedBlock:
    rows: CriteoRows
    rejected: RejectedRows
    lines: int  # lines in the block, header and blank lines included
    blank: int


def parse_block(
    data: bytes, dialect: CriteoDialect, *, first_line: int, skip_header: bool, hash_seed: int
) -> ParsedBlock:
    """Parse whole lines of Criteo text; bad rows are set aside with their reason."""
    lines = split_lines(data)
    n = len(lines)
    blank = lines.blank()
    keep = ~blank
    if skip_header and n:
        keep[0] = False
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    rejected = RejectedRows()

    delimiters = lines.delimiters(dialect.delimiter.encode())
    wrong = keep & (delimiters.counts != NUM_FIELDS)
    _reject(rejected, lines, line_numbers, np.flatnonzero(wrong), WRONG_FIELD_COUNT)
    candidates = np.flatnonzero(keep & ~wrong)
    fields = lines.fields(delimiters, candidates, NUM_FIELDS)

    labels = _parse_numbers(fields.column(0), allow_missing=False)
    bad = np.isnan(labels) | ~np.isin(labels, (0.0, 1.0))
    _reject(rejected, lines, line_numbers, candidates[bad], BAD_LABEL)

    integers = np.column_stack(
        [_parse_numbers(fields.column(1 + j), allow_missing=True) for j in range(NUM_INTEGER)]
    ) if len(candidates) else np.empty((0, NUM_INTEGER))
    bad_number = ~bad & np.isinf(integers).any(axis=1)
    _reject(rejected, lines, line_numbers, candidates[bad_number], BAD_NUMBER)
    bad |= bad_number

    good = np.flatnonzero(~bad)
    if len(good) != len(candidates):
        fields = fields.take(good)
    categorical = np.empty((len(good), NUM_CATEGORICAL), dtype=np.uint64)
    for j in range(NUM_CATEGORICAL):
        col = 1 + NUM_INTEGER + j
        categorical[:, j] = hashing.hash_spans(
            fields.data, fields.starts[col], fields.lengths(col), hashing.derive_seed(hash_seed, j)
        )

    rows = CriteoRows(
        labels=labels[good].astype(np.float32),
        integers=integers[good],
        categorical=categorical,
        lines=line_numbers[candidates[good]],
    )
    return ParsedBlock(rows=rows, rejected=rejected, lines=n, blank=int(blank.sum()))


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


@dataclass(frozen=True)
class CriteoFeatures:
    """The transformation from parsed rows to sparse features, fixed by the first pass."""

    hash_bits: int
    hash_seed: int
    log_transform: bool
    normalize: str
    stats: ColumnStats | None = None

    @property
    def feature_dim(self) -> int:
        return HASHED_OFFSET + (1 << self.hash_bits)

    def numeric_view(self, integers: np.ndarray) -> np.ndarray:
        """The integer features before scaling: what the statistics are taken of."""
        return log_counts(integers) if self.log_transform else integers

    def transform(self, rows: CriteoRows) -> SparseRows:
        if self.stats is None:
            raise ValueError("CriteoFeatures.transform needs the statistics of the first pass")
        n = len(rows)
        numeric = normalize(self.numeric_view(rows.integers), self.stats, self.normalize)
        missing = np.isnan(numeric)
        mask = np.uint64((1 << self.hash_bits) - 1)
        indices = np.empty((n, NUM_FIELDS - 1 + NUM_INTEGER), dtype=np.int64)
        values = np.ones((n, NUM_FIELDS - 1 + NUM_INTEGER), dtype=np.float32)
        present = np.ones((n, NUM_FIELDS - 1 + NUM_INTEGER), dtype=bool)
        indices[:, :NUM_INTEGER] = np.arange(NUM_INTEGER)
        values[:, :NUM_INTEGER] = np.where(missing, 0.0, numeric)
        present[:, :NUM_INTEGER] = ~missing
        indices[:, NUM_INTEGER:HASHED_OFFSET] = np.arange(NUM_INTEGER, HASHED_OFFSET)
        present[:, NUM_INTEGER:HASHED_OFFSET] = missing
        indices[:, HASHED_OFFSET:] = HASHED_OFFSET + (rows.categorical & mask).astype(np.int64)
        return SparseRows.from_dense_mask(rows.labels, indices, values, present)

    def to_json(self) -> dict:
        return {
            "format": "criteo",
            "hash_bits": self.hash_bits,
            "hash_seed": self.hash_seed,
            "hash": "cirrus-fmix64-words (cirrus_airflow.hashing)",
            "log_transform": self.log_transform,
            "normalize": self.normalize,
            "numeric_stats": None if self.stats is None else self.stats.to_json(),
            "layout": {
                "integers": [0, NUM_INTEGER],
                "missing_indicators": [NUM_INTEGER, HASHED_OFFSET],
                "hashed": [HASHED_OFFSET, self.feature_dim],
            },
            "columns": COLUMNS,
        }

    @classmethod
    def from_json(cls, doc: dict) -> CriteoFeatures:
        stats = doc.get("numeric_stats")
        return cls(
            hash_bits=int(doc["hash_bits"]),
            hash_seed=int(doc["hash_seed"]),
            log_transform=bool(doc["log_transform"]),
            normalize=doc["normalize"],
            stats=None if stats is None else ColumnStats.from_json(stats),
        )
