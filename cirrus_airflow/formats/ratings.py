"""Ratings text files (user, item, rating, maybe more columns) and dense ids for their users and items.

Explicit-feedback data comes in many small dialects: MovieLens' ``ratings.csv`` has a
header ``userId,movieId,rating,timestamp``, MovieLens 1M writes ``1::1193::5::978300760``
without one, other sets are tab-, semicolon- or space-separated. The dialect is sniffed
once from the start of a file and then applies to every byte-range split of it, parsed
without a Python loop over rows (the work per row is numpy and Arrow compute).

Matrix factorisation needs users and items as dense indices 0..n-1, agreed on by every
worker. The ids are collected in a first pass (``distinct_ids`` per split, ``merge_ids``
over all of them) into a sorted mapping; a second pass turns raw ids into indices with
``map_ids``. The order of the mapping is fixed by the set of ids alone, never by how the
input was split:

    if every id reads as a 64-bit integer, ids sort by that number (so user 2 comes
    before user 10), ties such as "7" and "07" by their text; otherwise they sort as
    UTF-8 strings (bytewise).

The mapping keeps ids as strings, so that a prediction for a raw id can find its index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirrus_airflow import hashing
from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.formats.text import Fields, Lines, split_lines
from cirrus_airflow.rejects import BAD_NUMBER, MISSING_ID, WRONG_FIELD_COUNT, RejectedRows

_SINGLE_DELIMITERS = ("\t", ",", ";", "|")
_BOM = b"\xef\xbb\xbf"
_NUMBER = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
_NAMES = {
    "user": ("userid", "user_id", "user", "uid"),
    "item": ("movieid", "movie_id", "itemid", "item_id", "item", "iid", "productid"),
    "rating": ("rating", "score", "stars"),
}
# Bytes tried first to stand for a multi-byte delimiter: ASCII separators, unused in text.
_STAND_INS = (0x1F, 0x1E, 0x1D, 0x1C)
_SPACE, _TAB, _NEWLINE, _CR = 32, 9, 10, 13
_BLANK = np.zeros(256, dtype=bool)
_BLANK[[_SPACE, _TAB]] = True


@dataclass(frozen=True)
class RatingsDialect:
    """How one ratings file is written: sniffed once, then shipped to every worker as JSON."""

    delimiter: str
    header: bool
    width: int
    user: int
    item: int
    rating: int

    def __post_init__(self) -> None:
        positions = (self.user, self.item, self.rating)
        if not self.delimiter or self.width < 3 or len(set(positions)) != 3 or not all(
            0 <= p < self.width for p in positions
        ):
            raise ValueError(f"not a usable ratings dialect: {self}")

    def to_json(self) -> dict:
        return {
            "delimiter": self.delimiter,
            "header": self.header,
            "width": self.width,
            "user": self.user,
            "item": self.item,
            "rating": self.rating,
        }

    @classmethod
    def from_json(cls, doc: dict) -> RatingsDialect:
        return cls(
            delimiter=doc["delimiter"],
            header=bool(doc["header"]),
            width=int(doc["width"]),
            user=int(doc["user"]),
            item=int(doc["item"]),
            rating=int(doc["rating"]),
        )


def sniff(head: bytes, source: str, *, columns: tuple[str, str, str] | None = None) -> RatingsDialect:
    """The dialect of a ratings file, from its first non-blank line.

    ``columns`` names the user, item and rating columns of a header, for files whose
    names are not the common ones; without it the common names are recognised, or the
    first three columns are taken to be user, item and rating.
    """
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    first = next((line.rstrip("\r") for line in text.split("\n") if line.strip()), None)
    if first is None:
        raise ValueError(f"{source}: no non-blank line at the start of the file. Is this the right --format?")
    delimiter = _sniff_delimiter(first)
    fields = [f for f in first.split(" ") if f] if delimiter == " " else first.split(delimiter)
    if len(fields) < 3:
        raise ValueError(
            f"{source}: the first line has {len(fields)} field(s) with delimiter {delimiter!r}: {first[:120]!r}; "
            "ratings need at least user, item and rating columns. Is this the right --format?"
        )
    names = [f.strip().strip('"').strip().lower() for f in fields]
    if columns is not None:
        wanted = [c.strip().lower() for c in columns]
        missing = [c for c, w in zip(columns, wanted) if w not in names]
        if missing or len(set(wanted)) != 3:
            raise ValueError(
                f"{source}: columns {list(columns)} are not three distinct names of the header; "
                f"its first line has: {', '.join(f.strip() for f in fields)}"
            )
        user, item, rating = (names.index(w) for w in wanted)
        return RatingsDialect(delimiter, True, len(fields), user, item, rating)
    header = not re.match(_NUMBER, fields[2].strip())
    positions = [next((i for i, n in enumerate(names) if n in _NAMES[role]), None) for role in _NAMES]
    if not header or None in positions or len(set(positions)) != 3:
        positions = [0, 1, 2]
    return RatingsDialect(delimiter, header, len(fields), *positions)


def _sniff_delimiter(line: str) -> str:
    if "::" in line:
        return "::"
    return next((d for d in _SINGLE_DELIMITERS if d in line), " ")


@dataclass
class RatingsRows:
    """Parsed, valid rows of a block; ids still raw, as the file wrote them (trimmed)."""

    users: pa.Array  # string
    items: pa.Array  # string
    ratings: np.ndarray  # float32 (n,)
    lines: np.ndarray  # int64 (n,), 1-based line numbers in the source file

    def __len__(self) -> int:
        return len(self.ratings)

    def row_hash(self) -> np.ndarray:
        """A hash of (user, item, rating), not of the line or the extra columns: so a
        row hashes the same in whichever split, file or dialect it is read."""
        return hashing.combine_columns(
            [
                hashing.hash_strings(self.users, 0),
                hashing.hash_strings(self.items, 1),
                hashing.hash_float64(self.ratings.astype(np.float64), 2),
            ]
        )

    def take(self, rows: np.ndarray) -> RatingsRows:
        indices = pa.array(np.asarray(rows, dtype=np.int64))
        return RatingsRows(
            users=self.users.take(indices),
            items=self.items.take(indices),
            ratings=self.ratings[rows],
            lines=self.lines[rows],
        )


def parse_block(data: bytes, dialect: RatingsDialect, *, first_line: int, skip_header: bool) -> ParsedBlock:
    """Parse whole lines of ratings text; bad rows are set aside with their reason.

    ``first_line`` is the 1-based number of the block's first line in its file;
    ``skip_header`` is for the block that starts the file, when the file has a header.
    Ids and ratings are trimmed of spaces and tabs, so ``1, 2, 4.5`` reads as ``1,2,4.5``.
    """
    if first_line == 1 and data.startswith(_BOM):
        data = data[len(_BOM) :]
    lines, delimiter = _lines_for(data, dialect.delimiter)
    n = len(lines)
    blank = lines.blank()
    keep = ~blank
    if skip_header:  # the header is the first non-blank line, as sniff saw it
        keep[np.flatnonzero(keep)[:1]] = False
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    rejected = RejectedRows()
    texts = _Texts(data, lines, dialect.delimiter)

    delimiters = lines.delimiters(delimiter)
    wrong = keep & (delimiters.counts != dialect.width)
    texts.reject(rejected, line_numbers, np.flatnonzero(wrong), WRONG_FIELD_COUNT)
    candidates = np.flatnonzero(keep & ~wrong)
    fields = _trimmed(lines.fields(delimiters, candidates, dialect.width), (dialect.user, dialect.item, dialect.rating))

    users, bad_users = _ids(fields, 0)
    items, bad_items = _ids(fields, 1)
    missing = bad_users | bad_items
    texts.reject(rejected, line_numbers, candidates[missing], MISSING_ID)
    ratings = _parse_ratings(fields.column(2))
    bad_number = ~missing & ~np.isfinite(ratings)
    texts.reject(rejected, line_numbers, candidates[bad_number], BAD_NUMBER)

    good = np.flatnonzero(~(missing | bad_number))
    take = pa.array(good)
    rows = RatingsRows(
        users=users.take(take),
        items=items.take(take),
        ratings=ratings[good],
        lines=line_numbers[candidates[good]],
    )
    return ParsedBlock(rows=rows, rejected=rejected, lines=n, blank=int(blank.sum()))


def _lines_for(data: bytes, delimiter: str) -> tuple[Lines, bytes]:
    """The block's lines and a one-byte delimiter splitting them as ``delimiter`` does.

    ``Lines.delimiters`` looks for one byte, so a longer delimiter (``::``) is replaced by
    a byte that does not occur in the block, and space-separated text, where fields are
    parted by runs of spaces, has its runs collapsed and its line ends stripped. Neither
    touches a newline, so line numbers are kept.
    """
    if delimiter == " ":
        return split_lines(_collapse_spaces(data)), b" "
    encoded = delimiter.encode("utf-8")
    if len(encoded) == 1:
        return split_lines(data), encoded
    stand_in = _unused_byte(data)
    return split_lines(data.replace(encoded, stand_in)), stand_in


def _collapse_spaces(data: bytes) -> bytes:
    raw = np.frombuffer(data.replace(b"\r\n", b"\n"), dtype=np.uint8)
    space = raw == _SPACE
    raw = raw[~(space & np.concatenate([[False], space[:-1]]))]
    # Each run is one space now; drop those at the start or end of a line.
    padded = np.concatenate([[_NEWLINE], raw, [_NEWLINE]]).astype(np.uint8)
    edge = (padded[:-2] == _NEWLINE) | (padded[2:] == _NEWLINE)
    return raw[~((raw == _SPACE) & edge)].tobytes()


def _unused_byte(data: bytes) -> bytes:
    for byte in _STAND_INS:
        if bytes([byte]) not in data:
            return bytes([byte])
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    counts[[_SPACE, _TAB, _NEWLINE, _CR]] = 1
    free = np.flatnonzero(counts == 0)
    if not free.size:
        raise ValueError("this block uses every byte value: it cannot be ratings text")
    return bytes([int(free[0])])


def _trimmed(fields: Fields, columns: tuple[int, int, int]) -> Fields:
    """The spans of ``columns`` without leading and trailing spaces and tabs.

    Each round moves only the spans that still have a blank edge byte, so the work is
    one pass over the spans plus the padding actually present (none in most files).
    """
    starts, ends = fields.starts[list(columns)], fields.ends[list(columns)]
    s, e, data = starts.reshape(-1), ends.reshape(-1), fields.data
    # A span ends at a delimiter or newline, so s and e - 1 index the block (e - 1 = -1,
    # the final newline, only for an empty span).
    leading = np.flatnonzero((s < e) & _BLANK[data[s]])
    while leading.size:
        s[leading] += 1
        leading = leading[(s[leading] < e[leading]) & _BLANK[data[s[leading]]]]
    trailing = np.flatnonzero((s < e) & _BLANK[data[e - 1]])
    while trailing.size:
        e[trailing] -= 1
        trailing = trailing[(s[trailing] < e[trailing]) & _BLANK[data[e[trailing] - 1]]]
    return Fields(data=data, starts=starts, ends=ends)


def _ids(fields: Fields, column: int) -> tuple[pa.Array, np.ndarray]:
    """A column of ids as strings, and where an id is unusable: empty, or not UTF-8.

    Casting validates the whole column at once; only when that fails are the few ids
    with non-ASCII bytes decoded one by one to find the culprits.
    """
    values = fields.column(column)
    unusable = fields.lengths(column) == 0
    try:
        return pc.cast(values, pa.string()), unusable
    except pa.ArrowInvalid:
        high = np.concatenate([[0], np.cumsum(fields.data >= 0x80)])
        suspects = np.flatnonzero(high[fields.ends[column]] > high[fields.starts[column]])
        for row, value in zip(suspects, values.take(pa.array(suspects)).to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                unusable[row] = True
        cleaned = pc.if_else(pa.array(unusable), pa.scalar(b"", values.type), values)
        return pc.cast(cleaned, pa.string()), unusable


def _parse_ratings(values: pa.Array) -> np.ndarray:
    """Ratings as float32, NaN where empty, unparsable or not finite (also as float32).

    The fast path casts the whole column at once; only a column that holds a bad value
    pays for the regular expression that finds it.
    """
    present = pc.if_else(pc.equal(pc.binary_length(values), 0), pa.scalar(None, values.type), values)
    try:
        parsed = pc.cast(present, pa.float64())
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(present, _NUMBER), False)
        parsed = pc.cast(pc.if_else(ok, present, pa.scalar(None, values.type)), pa.float64())
    with np.errstate(over="ignore"):
        ratings = parsed.to_numpy(zero_copy_only=False).astype(np.float32)
    ratings[~np.isfinite(ratings)] = np.nan
    return ratings


class _Texts:
    """The text of rejected lines as the file has it (not with a stand-in delimiter or
    collapsed spaces): the block is split again as written, only once something is rejected."""

    def __init__(self, data: bytes, lines: Lines, delimiter: str) -> None:
        self._data = data
        self._lines = lines if len(delimiter.encode("utf-8")) == 1 and delimiter != " " else None

    def reject(self, rejected: RejectedRows, numbers: np.ndarray, which: np.ndarray, reason: str) -> None:
        if not which.size:
            return
        if self._lines is None:
            self._lines = split_lines(self._data)
        rejected.add(numbers[which], reason, [self._lines.text(int(i)) for i in which])


def distinct_ids(values: pa.Array) -> pa.Array:
    """The sorted unique ids of one block, as strings: what a split contributes to the mapping."""
    return _sorted_ids(pc.unique(_strings(values).drop_null()))


def merge_ids(parts: list[pa.Array]) -> pa.Array:
    """The sorted unique union of ``distinct_ids`` outputs: the mapping, index i <-> ids[i]."""
    if not parts:
        return pa.array([], type=pa.string())
    return _sorted_ids(pc.unique(pa.concat_arrays([_strings(p) for p in parts])))


def map_ids(values: pa.Array, mapping: pa.Array) -> np.ndarray:
    """The int32 index of each value in ``mapping``; -1 for ids that are not in it (or null)."""
    indices = pc.index_in(_strings(values), value_set=_strings(mapping))
    return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def _strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], type=values.type)
    return values if values.type == pa.string() else pc.cast(values, pa.string())


def _sorted_ids(unique: pa.Array) -> pa.Array:
    """Unique ids in the mapping's order (see the module docstring)."""
    try:
        numbers = pc.cast(unique, pa.int64())
    except pa.ArrowInvalid:
        return unique.take(pc.sort_indices(unique))
    order = pc.sort_indices(pa.table({"n": numbers, "s": unique}), sort_keys=[("n", "ascending"), ("s", "ascending")])
    return unique.take(order)
