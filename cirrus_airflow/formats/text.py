"""Line-oriented text input: byte-range splits aligned on lines, and lines as Arrow arrays.

A large text file is cut into byte ranges so that many workers share it. The rule
that makes the ranges exact is the Hadoop one: a split owns every line whose first
byte lies in [start, end). A reader therefore skips the partial line at its start
(the previous split owns it) and reads past its end to finish its last line. No line
is read twice or missed, with or without a trailing newline, with LF or CRLF ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirrus_airflow.storage import Storage

_NEWLINE = 10
_CR = 13
_READ_AHEAD = 1 << 16


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

    @property
    def blank(self) -> np.ndarray:
        """Lines that are empty or hold only spaces and tabs."""
        visible = np.zeros(self.data.size + 1, dtype=np.int64)
        np.cumsum(~np.isin(self.data, _BLANK_BYTES), out=visible[1:])
        return visible[self.ends] == visible[self.starts]

    def split(self, delimiter: bytes) -> pa.ListArray:
        """Every line split on a one-byte delimiter, in one vectorised call.

        Each line's newline is turned into the delimiter, so the lines sit back to
        back in one buffer and split into their fields plus one empty trailing field
        (which callers discount); no line is copied out on its own.
        """
        if len(delimiter) != 1:
            raise ValueError(f"delimiter must be one byte, got {delimiter!r}")
        content = self.data.copy()
        content[self.ends] = delimiter[0]
        large = content.size >= 2**31
        offsets = np.append(self.starts, content.size).astype(np.int64 if large else np.int32)
        kind = pa.large_binary() if large else pa.binary()
        lines = pa.Array.from_buffers(
            kind, len(self), [None, pa.py_buffer(offsets), pa.py_buffer(content)]
        )
        return pc.split_pattern(lines, pattern=delimiter)


_BLANK_BYTES = np.array([32, 9], dtype=np.uint8)


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
