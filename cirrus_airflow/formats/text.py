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
    """The bytes of every line that starts in [start, end) of a file of ``size`` bytes."""
    if start >= end or start >= size:
        return b""
    lo = start - 1 if start > 0 else 0
    buf = bytearray(storage.read_bytes(uri, lo, min(end, size)))
    begin = 0
    if start > 0:
        # A line starts at q when byte q-1 is a newline; q must lie in [start, end).
        first = buf.find(b"\n", 0, len(buf) - 1 if lo + len(buf) == end else len(buf))
        if first == -1 or lo + first + 1 >= end:
            return b""
        begin = first + 1
    pos = lo + len(buf)
    while pos < size and (not buf or buf[-1] != _NEWLINE):
        more = storage.read_bytes(uri, pos, min(pos + _READ_AHEAD, size))
        if not more:
            break
        cut = more.find(b"\n")
        if cut != -1:
            buf += more[: cut + 1]
            break
        buf += more
        pos += len(more)
    return bytes(buf[begin:])


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
        """Lines that are empty or hold only spaces and tabs."""
        if not len(self):
            return np.zeros(0, dtype=bool)
        d = self.data
        visible = (d != 32) & (d != 9) & (d != _NEWLINE)
        # Each segment [start, next start) is one line and its newline: never empty.
        return ~np.logical_or.reduceat(visible, self.starts)

    def delimiters(self, delimiter: bytes) -> Delimiters:
        """Where the delimiter occurs, and so how many fields each line has."""
        if len(delimiter) != 1:
            raise ValueError(f"delimiter must be one byte, got {delimiter!r}")
        positions = np.flatnonzero(self.data == delimiter[0]).astype(_index_dtype(self.data.size))
        first = np.searchsorted(positions, self.starts)
        counts = np.searchsorted(positions, self.ends) - first + 1
        return Delimiters(positions=positions, first=first, counts=counts)

    def fields(self, delimiters: Delimiters, lines: np.ndarray, width: int) -> Fields:
        """The byte spans of the ``width`` fields of each of ``lines`` (which must all
        have that many): found with one gather, no line split on its own."""
        first = delimiters.first[lines].astype(delimiters.positions.dtype)
        dtype = delimiters.positions.dtype
        starts = np.empty((width, len(lines)), dtype=dtype)
        ends = np.empty((width, len(lines)), dtype=dtype)
        for j in range(width - 1):
            between = delimiters.positions[first + j]
            ends[j] = between
            starts[j + 1] = between + 1
        starts[0] = self.starts[lines]
        ends[-1] = self.ends[lines]
        return Fields(data=self.data, starts=starts, ends=ends)


def _index_dtype(size: int) -> type:
    return np.int32 if size < 2**31 else np.int64


@dataclass
class Delimiters:
    positions: np.ndarray  # every delimiter in the block
    first: np.ndarray  # per line: index in ``positions`` of its first delimiter
    counts: np.ndarray  # per line: number of fields


@dataclass
class Fields:
    """Byte spans [start, end) of the fields of some lines, stored column by column
    (one contiguous array per field, which is how they are used)."""

    data: np.ndarray
    starts: np.ndarray  # (width, lines)
    ends: np.ndarray

    def __len__(self) -> int:
        return self.starts.shape[1]

    def take(self, rows: np.ndarray) -> Fields:
        return Fields(data=self.data, starts=self.starts[:, rows], ends=self.ends[:, rows])

    def lengths(self, column: int) -> np.ndarray:
        return self.ends[column] - self.starts[column]

    def column(self, column: int) -> pa.Array:
        """One column's values as an Arrow binary array (its bytes gathered, vectorised)."""
        starts = self.starts[column].astype(np.int64)
        lengths = self.lengths(column).astype(np.int64)
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        kind, dtype = (pa.binary(), np.int32) if offsets[-1] < 2**31 else (pa.large_binary(), np.int64)
        return pa.Array.from_buffers(
            kind, len(starts), [None, pa.py_buffer(offsets.astype(dtype)), pa.py_buffer(self.data[gather])]
        )


def split_lines(data: bytes) -> Lines:
    """The lines of a block (LF or CRLF); the last line may lack its newline."""
    raw = np.frombuffer(data, dtype=np.uint8)
    crlf = np.flatnonzero((raw[1:] == _NEWLINE) & (raw[:-1] == _CR))
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
