"""Line-oriented text input: byte-range splits aligned on lines, and the byte spans of fields.

A large text file is cut into byte ranges so that many workers share it. The rule
that makes the ranges exact is the Hadoop one: a split owns every line whose first
byte lies in [start, end). A reader therefore skips the partial line at its start
(the previous split owns it) and reads past its end to finish its last line. No line
is read twice or missed, with or without a trailing newline, with LF or CRLF ends.

A gzip file cannot be entered in the middle, so it is never cut: one reader
decompresses it from the start, streaming, and gets the same bytes as from the
plain file.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cirrus_airflow.hashing import WORD_MASKS, WordReader
from cirrus_airflow.storage import Storage

_NEWLINE = 10
_CR = 13
_READ_AHEAD = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_READ = 8 << 20


class CorruptInputError(ValueError):
    """An input file cannot be read at all (a corrupt or truncated gzip); the message names it.

    A class of its own so that the driver can tell bad input, found by a worker, from a
    failed worker: the executor reports the class name as the error type.
    """


def is_gzip(uri: str, head: bytes) -> bool:
    """Compressed by name (``.gz``) or by content (the gzip magic bytes), whichever says so."""
    return uri.endswith(".gz") or head.startswith(_GZIP_MAGIC)


def read_gzip(storage: Storage, uri: str, limit: int = -1) -> bytes:
    """The decompressed bytes of a gzip file, or the first ``limit`` of them, streamed
    from storage (never the whole compressed object held at once). Reads are large for a
    whole file (few GETs on S3) and small for a peek at its start."""
    buffer_size = _GZIP_READ if limit < 0 else min(_GZIP_READ, max(limit, _READ_AHEAD))
    try:
        with storage.open_input(uri, buffer_size=buffer_size) as raw, gzip.GzipFile(fileobj=raw) as stream:
            return stream.read(limit)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorruptInputError(
            f"{uri}: cannot decompress this gzip file, is it corrupt or truncated? ({exc})"
        ) from None


def read_line_range(storage: Storage, uri: str, start: int, end: int, size: int) -> bytes:
    """The bytes of every line that starts in [start, end) of a file of ``size`` bytes.

    One read covers the range, the byte before it and a little more, which finishes the
    last line in all but pathological files; a longer last line is read on in steps.
    """
    if start >= end or start >= size:
        return b""
    lo = start - 1 if start > 0 else 0
    stop = min(end, size)
    raw = storage.read_bytes(uri, lo, min(stop + _READ_AHEAD, size))
    begin = 0
    if start > 0:
        # A line starts at q when byte q-1 is a newline; q must lie in [start, end).
        first = raw.find(b"\n", 0, min(end - 1, size) - lo)
        if first == -1 or lo + first + 1 >= end:
            return b""
        begin = first + 1
    # The last line owned is the one holding byte stop-1: it ends at the first newline from there.
    cut = raw.find(b"\n", stop - 1 - lo)
    if cut != -1:
        return raw[begin : cut + 1]
    parts = [raw[begin:]]
    pos = lo + len(raw)
    while pos < size:
        more = storage.read_bytes(uri, pos, min(pos + _READ_AHEAD, size))
        if not more:
            break
        cut = more.find(b"\n")
        if cut != -1:
            parts.append(more[: cut + 1])
            break
        parts.append(more)
        pos += len(more)
    return b"".join(parts)


def plan_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """Cut [0, size) into ``parts`` contiguous ranges of near-equal length."""
    parts = max(1, min(parts, size)) if size else 1
    bounds = np.linspace(0, size, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a] or [(0, 0)]


@dataclass
class Lines:
    """A block of text lines: the bytes (CRLF turned into LF, ending in a newline) and
    where each line starts and ends (the position of its newline)."""

    data: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> str:
        return bytes(self.data[self.starts[i] : self.ends[i]]).decode("utf-8", errors="replace")

    def blank(self) -> np.ndarray:
        """Lines that are empty or hold only spaces and tabs.

        A line whose first byte is visible is not blank, which settles almost every
        line with one gather; only lines that start blank have all their bytes looked at.
        """
        if not len(self):
            return np.zeros(0, dtype=bool)
        d = self.data
        blank = _INVISIBLE[d[self.starts]]  # an empty line's first byte is its newline
        suspects = np.flatnonzero(blank & (self.ends > self.starts))
        if not suspects.size:
            return blank
        if 8 * int((self.ends[suspects] - self.starts[suspects]).sum()) > d.size:
            # So many that one pass over the block is cheaper than gathering their bytes.
            visible = ~_INVISIBLE[d]
            # Each segment [start, next start) is one line and its newline: never empty.
            return ~np.logical_or.reduceat(visible, self.starts)
        text, offsets = _gather(d, self.starts[suspects], self.ends[suspects] - self.starts[suspects])
        blank[suspects] = ~np.logical_or.reduceat(~_INVISIBLE[text], offsets[:-1])
        return blank

    def delimiters(self, delimiter: bytes) -> Delimiters:
        """Where the delimiter occurs, and so how many fields each line has."""
        if len(delimiter) != 1:
            raise ValueError(f"delimiter must be one byte, got {delimiter!r}")
        dtype = _index_dtype(self.data.size)
        positions = np.flatnonzero(self.data == delimiter[0]).astype(dtype)
        before_end = np.searchsorted(positions, self.ends.astype(dtype))
        if delimiter != b"\n" and len(self) and np.array_equal(self.starts[1:], self.ends[:-1] + 1):
            # Lines follow one another and a newline is no delimiter, so the delimiters
            # before a line's start are those before the previous line's end.
            first = np.empty_like(before_end)
            first[0] = np.searchsorted(positions, self.starts[0])
            first[1:] = before_end[:-1]
        else:
            first = np.searchsorted(positions, self.starts.astype(dtype))
        return Delimiters(positions=positions, first=first, counts=before_end - first + 1)

    def fields(self, delimiters: Delimiters, lines: np.ndarray, width: int) -> Fields:
        """The byte spans of the ``width`` fields of each of ``lines`` (which must all
        have that many): found with one gather, no line split on its own."""
        positions = delimiters.positions
        m = len(lines)
        if m == len(self) and positions.size == m * (width - 1) and np.array_equal(lines, np.arange(m)):
            between = positions.reshape(m, width - 1)  # every delimiter, line by line
        else:
            # Row by row, so that the gather reads the delimiters in order.
            between = positions[delimiters.first[lines][:, None] + np.arange(width - 1)]
        starts = np.empty((width, m), dtype=positions.dtype)
        ends = np.empty((width, m), dtype=positions.dtype)
        ends[:-1] = between.T
        np.add(between.T, 1, out=starts[1:])
        starts[0] = self.starts[lines]
        ends[-1] = self.ends[lines]
        return Fields(data=self.data, starts=starts, ends=ends)


def _index_dtype(size: int) -> type:
    return np.int32 if size < 2**31 else np.int64


# Bytes that do not make a line non-blank: space, tab and the newline.
_INVISIBLE = np.zeros(256, dtype=bool)
_INVISIBLE[[32, 9, _NEWLINE]] = True


@dataclass
class Delimiters:
    positions: np.ndarray  # every delimiter in the block
    first: np.ndarray  # per line: index in ``positions`` of its first delimiter
    counts: np.ndarray  # per line: number of fields


@dataclass
class Fields:
    """Byte spans [start, end) of the fields of some lines, as (width, lines) arrays:
    one array per field, which is how they are used (they may be views of row-major
    arrays, see ``split_uniform``)."""

    data: np.ndarray
    starts: np.ndarray  # (width, lines)
    ends: np.ndarray

    def __len__(self) -> int:
        return self.starts.shape[1]

    def take(self, rows: np.ndarray) -> Fields:
        return Fields(data=self.data, starts=self.starts[:, rows], ends=self.ends[:, rows])

    def lengths(self, column: int) -> np.ndarray:
        return self.ends[column] - self.starts[column]

    def column(self, column: int, rows: np.ndarray | None = None) -> pa.Array:
        """One column's values (of ``rows`` only, if given) as an Arrow binary array (its
        bytes gathered, vectorised)."""
        starts, ends = self.starts[column], self.ends[column]
        if rows is not None:
            starts, ends = starts[rows], ends[rows]
        values, offsets = _gather(self.data, starts, ends - starts)
        kind, dtype = (pa.binary(), np.int32) if offsets[-1] < 2**31 else (pa.large_binary(), np.int64)
        return pa.Array.from_buffers(
            kind, len(starts), [None, pa.py_buffer(offsets.astype(dtype)), pa.py_buffer(values)]
        )

    def small_integers(self, columns: slice) -> tuple[np.ndarray, np.ndarray]:
        """Some columns as (lines, k) float64: NaN where a field is empty, the exact value
        where it is an optional minus sign and 1 to 8 decimal digits (all of a count
        column, as a rule); ``unparsed`` marks the other fields (NaN too), left to the caller.

        Parsing through Arrow means copying every value out and casting it; here the
        digits are read as one 8-byte word per value and combined with three multiplies
        (SWAR, as simdjson does), a band of lines at a time so that their bytes stay in cache.
        """
        starts, ends = self.starts[columns].T, self.ends[columns].T
        values = np.empty(starts.shape)
        unparsed = np.empty(starts.shape, dtype=bool)
        reader = WordReader(self.data)
        band = max(1, _BAND // max(1, starts.shape[1]))
        for lo in range(0, len(starts), band):
            rows = slice(lo, lo + band)
            values[rows], unparsed[rows] = _small_integers(
                self.data, reader, np.ascontiguousarray(starts[rows], dtype=np.int64),
                np.ascontiguousarray(ends[rows], dtype=np.int64),
            )
        return values, unparsed


# Fields parsed per vectorised step (see Fields.small_integers).
_BAND = 1 << 16
_MINUS = ord("-")
_ZEROS = np.uint64(0x3030303030303030)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_SIXES = np.uint64(0x0606060606060606)
_THREES = np.uint64(0x3333333333333333)
_PAIRS = np.uint64(0x000000FF000000FF)
_MUL1 = np.uint64(100 + (1000000 << 32))
_MUL2 = np.uint64(1 + (10000 << 32))
_TEN = np.uint64(10)
_THREE, _FOUR, _EIGHT, _SIXTEEN, _THIRTY_TWO = (np.uint64(k) for k in (3, 4, 8, 16, 32))


def _small_integers(
    data: np.ndarray, reader: WordReader, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``Fields.small_integers`` for one band of (lines, k) spans."""
    minus = data[starts] == _MINUS  # an empty field's first byte is its delimiter
    starts = starts + minus
    count = ends - starts
    plain = (count >= 1) & (count <= 8)
    count = np.clip(count, 1, 8)
    keep = WORD_MASKS[count]
    w = reader.at(starts)
    w &= keep
    w |= _ZEROS & ~keep  # past the value, '0' bytes: the digit test then sees 8 digits
    plain &= ((w & _HIGH_NIBBLES) | (((w + _SIXES) & _HIGH_NIBBLES) >> _FOUR)) == _THREES
    w -= _ZEROS
    w <<= (8 - count).astype(np.uint64) << _THREE  # right-align: the bytes shifted in are leading zeros
    w = w * _TEN + (w >> _EIGHT)
    w = ((w & _PAIRS) * _MUL1 + ((w >> _SIXTEEN) & _PAIRS) * _MUL2) >> _THIRTY_TWO
    values = w.astype(np.float64)
    np.negative(values, out=values, where=minus)  # "-0" is -0.0, as Arrow reads it
    values[~plain] = np.nan
    return values, ~plain & (ends > starts - minus)


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of some spans, one after another, and their int64 offsets (vectorised)."""
    lengths = lengths.astype(np.int64)
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    where = np.repeat(starts.astype(np.int64) - offsets[:-1], lengths) + np.arange(offsets[-1])
    return data[where], offsets


def split_lines(data: bytes) -> Lines:
    """The lines of a block (LF or CRLF); the last line may lack its newline."""
    raw = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(raw[:-1] == _CR)
    if cr.size:
        crlf = cr[raw[cr + 1] == _NEWLINE]
        if crlf.size:
            raw = np.delete(raw, crlf)
    if not raw.size or raw[-1] != _NEWLINE:
        raw = np.append(raw, np.uint8(_NEWLINE)) if raw.size else raw
    ends = np.flatnonzero(raw == _NEWLINE)
    starts = np.empty_like(ends)
    if ends.size:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return Lines(data=raw, starts=starts, ends=ends)


def split_uniform(data: bytes, delimiter: bytes, width: int) -> tuple[Lines, Fields] | None:
    """The lines of a block and the spans of all their fields, when every line has exactly
    ``width`` fields and ends in LF, with no other control byte up to CR in the block (a
    clean file, the common case); None otherwise, and the caller takes the general path
    (``split_lines``, ``Lines.delimiters``, ``Lines.fields``), which gives the same spans.

    The general path scans the block for newlines, for carriage returns and for
    delimiters, and then searches where every line's delimiters are. Here a single scan
    finds every field end (delimiter or newline), and since each line has ``width`` of
    them, they are a (lines, width) array as they come: no search and no gather.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(delimiter) != 1 or not raw.size or raw[-1] != _NEWLINE:
        return None
    code = delimiter[0]
    stops = raw <= _CR  # LF, CR, and the tab of TSV, in one comparison
    if code > _CR:
        stops |= raw == code
    ends = np.flatnonzero(stops)
    n = ends.size // width
    if ends.size != n * width:
        return None
    kinds = raw[ends].reshape(n, width)
    if not ((kinds[:, :-1] == code).all() and (kinds[:, -1] == _NEWLINE).all()):
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    ends, starts = ends.reshape(n, width), starts.reshape(n, width)
    lines = Lines(data=raw, starts=starts[:, 0].copy(), ends=ends[:, -1].copy())
    return lines, Fields(data=raw, starts=starts.T, ends=ends.T)
