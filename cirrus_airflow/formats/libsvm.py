"""The LIBSVM / SVMlight sparse text format, parsed a whole block at a time.

Each line is one example::

    <label> <index>:<value> <index>:<value> ... [# comment]

Tokens are separated by runs of spaces or tabs (any control byte counts as a space);
leading and trailing whitespace is ignored, and lines end in LF or CRLF. ``#`` starts a
comment that runs to the end of the line (SVMlight writes per-example notes there), so
a line holding only whitespace and a comment is blank. The rules:

* The label is a number equal to -1, 0 or +1 (``1.0`` and ``+1`` are fine); -1 and 0
  both mean the negative class, so labels come out as 0.0 or 1.0.
* Every other token is ``index:value``: the index a non-negative decimal integer (kept
  as written; which base the file uses is the transform's business), the value a finite
  decimal float. SVMlight's ``qid:N`` tokens are skipped.
* A row may have no features at all. Within a row, entries come out sorted by index
  whatever order the file has them in.

A bad row is set aside with the first reason that applies, in this order: a bad label,
a malformed token or non-finite value (bad number), a negative index or one above
``max_index`` (index out of range), the same index twice (duplicate index).

Blocks can be big (the map tasks parse byte-range splits of large files), so nothing
here loops over rows or tokens in Python: the bytes are classified with numpy, token
and colon positions found from the whole block at once, and the numbers parsed by
Arrow casts on binary arrays that point into the block without copying it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirrus_airflow import hashing
from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.formats.text import Lines, split_lines
from cirrus_airflow.rejects import (
    BAD_LABEL,
    BAD_NUMBER,
    DUPLICATE_INDEX,
    INDEX_OUT_OF_RANGE,
    RejectedRows,
)

_SPACE = 32
_COLON = 58
_HASH = 35
_FLOAT = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
# Up to 18 significant digits always fit an int64, so the fallback cast cannot overflow;
# the fast path holds indices to the same bound (_INDEX_LIMIT) so both agree.
_INTEGER = r"^-?0*[0-9]{1,18}$"
_INDEX_LIMIT = 10**18
_LABELS = (-1.0, 0.0, 1.0)
# A row gets the first of these that applies to it.
_REASONS = (BAD_LABEL, BAD_NUMBER, INDEX_OUT_OF_RANGE, DUPLICATE_INDEX)
_PIECE = 1 << 20
_REGEX_SPANS = 8192
_HASH_ENTRIES = 1 << 20
_ENTRY_SEED = 0x11B5


@dataclass(frozen=True)
class LibsvmDialect:
    """Nothing varies per file today but is kept for symmetry with other formats."""

    def to_json(self) -> dict:
        return {}

    @classmethod
    def from_json(cls, doc: dict) -> LibsvmDialect:
        return cls()


def sniff(head: bytes, source: str) -> LibsvmDialect:
    """Fail early, with a hint, when a file given as LIBSVM is something else.

    Only the first line with content is checked: it must be a number and then
    ``index:value`` tokens. The head may stop in the middle of a line, so a last token
    with no newline after it is not held against the file.
    """
    pieces = head.decode("utf-8", errors="replace").lstrip("\ufeff").split("\n")
    for n, piece in enumerate(pieces):
        tokens = piece.split("#", 1)[0].split()
        if not tokens:
            continue
        if n == len(pieces) - 1 and len(tokens) > 1:
            tokens = tokens[:-1]
        problem = _sniff_problem(tokens)
        if problem:
            seen = piece.strip()
            seen = seen if len(seen) <= 80 else seen[:77] + "..."
            raise ValueError(
                f"{source}: the first line does not look like LIBSVM ({problem}; it reads {seen!r}); "
                "expected '<label> <index>:<value> ...'. Is this the right --format?"
            )
        return LibsvmDialect()
    return LibsvmDialect()


def _sniff_problem(tokens: list[str]) -> str | None:
    try:
        float(tokens[0])
    except ValueError:
        return f"the label {tokens[0]!r} is not a number"
    for token in tokens[1:]:
        index, colon, value = token.partition(":")
        try:
            if not colon or (index != "qid" and not index.isdigit()):
                raise ValueError
            float(value)
        except ValueError:
            return f"{token!r} is not index:value"
    return None


@dataclass
class LibsvmRows:
    """Valid rows of a block, as CSR arrays."""

    labels: np.ndarray  # float32 (n,), 0.0 or 1.0
    indptr: np.ndarray  # int64 (n + 1,)
    indices: np.ndarray  # int64 (nnz,), as written in the file, ascending within a row
    values: np.ndarray  # float64 (nnz,)
    lines: np.ndarray  # int64 (n,), 1-based line numbers in the source file

    def __len__(self) -> int:
        return len(self.labels)

    def row_hash(self) -> np.ndarray:
        """A hash of each row's content, the same wherever and whenever it is parsed.

        Each entry is hashed on its own and a row's entry hashes are summed (mod 2**64),
        so a row's hash depends only on its own entries, never on where a block began.
        The entries are hashed a million or so at a time, whole rows each time: hashing
        takes a dozen temporary arrays, which then stay small enough to be reused.
        """
        n = len(self)
        per_row = np.empty(n, dtype=np.uint64)
        targets = np.arange(0, self.indptr[-1], _HASH_ENTRIES)
        cuts = np.unique(np.concatenate([[0, n], np.searchsorted(self.indptr, targets, side="right") - 1]))
        for first, last in zip(cuts[:-1], cuts[1:]):
            base = self.indptr[first]
            entries = slice(base, self.indptr[last])
            summed = np.zeros(entries.stop - base + 1, dtype=np.uint64)
            np.cumsum(
                hashing.combine_columns([self.indices[entries].astype(np.uint64),
                                         hashing.hash_float64(self.values[entries], _ENTRY_SEED)]),
                out=summed[1:],
            )
            per_row[first:last] = summed[self.indptr[first + 1 : last + 1] - base] - summed[self.indptr[first:last] - base]
        return hashing.combine_columns(
            [hashing.hash_float64(self.labels.astype(np.float64), 0), per_row, np.diff(self.indptr).astype(np.uint64)]
        )

    def take(self, rows: np.ndarray) -> LibsvmRows:
        """The given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return LibsvmRows(
            labels=self.labels[rows],
            indptr=indptr,
            indices=self.indices[gather],
            values=self.values[gather],
            lines=self.lines[rows],
        )


def parse_block(data: bytes, *, first_line: int, max_index: int | None = None) -> ParsedBlock:
    """Parse whole lines of LIBSVM text; bad rows are set aside with their reason.

    A big block is parsed about a megabyte of lines at a time: the per-byte and
    per-token arrays of a piece stay in cache and their memory is reused, instead of
    being allocated (and page-faulted in) at the size of the whole block.
    """
    view = memoryview(data)
    pieces = _pieces(data)
    (start, end), rest = pieces[0], pieces[1:]
    first = _parse_lines(view[start:end], first_line=first_line, max_index=max_index)
    if not rest:
        return first
    collected = _Collected(first, expected=len(data) / max(end - start, 1))
    for start, end in rest:
        collected.add(_parse_lines(view[start:end], first_line=first_line + collected.lines, max_index=max_index))
    return collected.block()


def _pieces(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of about _PIECE bytes that end after a newline (or at the end)."""
    cuts = [0]
    while len(data) - cuts[-1] > _PIECE:
        cut = data.find(b"\n", cuts[-1] + _PIECE - 1)
        if cut == -1 or cut + 1 == len(data):
            break
        cuts.append(cut + 1)
    cuts.append(len(data))
    return list(zip(cuts[:-1], cuts[1:]))


class _Collected:
    """The pieces of a block gathered into arrays of the whole block's size.

    The arrays are sized from the first piece and resized in place (realloc, which
    moves no bytes for big arrays) when a later piece needs more, and once at the end
    to fit: the output is written once instead of kept in pieces and concatenated.
    """

    def __init__(self, first: ParsedBlock, expected: float) -> None:
        rows = int(len(first.rows) * expected * 1.1) + 1024
        entries = int(len(first.rows.indices) * expected * 1.1) + 1024
        self.labels = np.empty(rows, dtype=np.float32)
        self.numbers = np.empty(rows, dtype=np.int64)
        self.indptr = np.zeros(rows + 1, dtype=np.int64)
        self.indices = np.empty(entries, dtype=np.int64)
        self.values = np.empty(entries, dtype=np.float64)
        self.rows = self.entries = self.lines = self.blank = 0
        self.rejected = RejectedRows()
        self.add(first)

    def add(self, part: ParsedBlock) -> None:
        r, n, k = part.rows, len(part.rows), len(part.rows.indices)
        if self.rows + n > len(self.labels):
            size = max(2 * len(self.labels), self.rows + n)
            for array in (self.labels, self.numbers):
                array.resize(size, refcheck=False)
            self.indptr.resize(size + 1, refcheck=False)
        if self.entries + k > len(self.indices):
            size = max(2 * len(self.indices), self.entries + k)
            for array in (self.indices, self.values):
                array.resize(size, refcheck=False)
        self.labels[self.rows : self.rows + n] = r.labels
        self.numbers[self.rows : self.rows + n] = r.lines
        self.indptr[self.rows + 1 : self.rows + n + 1] = r.indptr[1:] + self.entries
        self.indices[self.entries : self.entries + k] = r.indices
        self.values[self.entries : self.entries + k] = r.values
        self.rows += n
        self.entries += k
        self.lines += part.lines
        self.blank += part.blank
        self.rejected.lines.extend(part.rejected.lines)
        self.rejected.reasons.extend(part.rejected.reasons)
        self.rejected.texts.extend(part.rejected.texts)

    def block(self) -> ParsedBlock:
        for array, size in ((self.labels, self.rows), (self.numbers, self.rows), (self.indptr, self.rows + 1),
                            (self.indices, self.entries), (self.values, self.entries)):
            array.resize(size, refcheck=False)
        rows = LibsvmRows(self.labels, self.indptr, self.indices, self.values, self.numbers)
        return ParsedBlock(rows=rows, rejected=self.rejected, lines=self.lines, blank=self.blank)


def _parse_lines(data: memoryview, *, first_line: int, max_index: int | None) -> ParsedBlock:
    """One piece of a block: whole lines, numbered from ``first_line``."""
    lines = split_lines(data)
    d = lines.data
    n = len(lines)
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    comments = n > 0 and bool((d == _HASH).any())
    in_token = np.zeros(d.size + 1, dtype=bool)  # in_token[p + 1]: byte p is part of a token
    np.greater(d, _SPACE, out=in_token[1:])
    if comments:
        in_token[1:] &= ~_comment_mask(lines)
    edges = np.flatnonzero(in_token[1:] != in_token[:-1])
    starts, ends = edges[0::2], edges[1::2]  # every line ends in a newline, so every token closes

    # Tokens before each newline, and so each line's count and first (label) token.
    before = np.searchsorted(starts, lines.ends)
    counts = np.diff(before, prepend=0)
    content = np.flatnonzero(counts)
    label_token = before[content] - counts[content]
    label = _parse_floats(d, starts[label_token], ends[label_token])

    is_feature = np.ones(len(starts), dtype=bool)
    is_feature[label_token] = False
    fs, fe = starts[is_feature], ends[is_feature]
    colon, shaped = _colons(d, in_token, starts, ends, is_feature, fs, fe, comments)
    entries = _Entries(fs, fe, counts[content] - 1, colon, shaped)
    if (d == ord("q")).any():
        entries = entries.without_qid(d)
    index, value, bad_entries = entries.parse(d)

    m = len(content)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(entries.sizes, out=indptr[1:])
    flags = {reason: np.zeros(m, dtype=bool) for reason in _REASONS}
    flags[BAD_LABEL][:] = ~np.isin(label, _LABELS)
    flags[BAD_NUMBER][_row_of(indptr, bad_entries)] = True
    if len(index) and (index.min() < 0 or (max_index is not None and index.max() > max_index)):
        outside = index < 0 if max_index is None else (index < 0) | (index > max_index)
        flags[INDEX_OUT_OF_RANGE][_row_of(indptr, np.flatnonzero(outside))] = True
    index, value, duplicate_rows = _sort_rows(indptr, index, value)
    flags[DUPLICATE_INDEX][duplicate_rows] = True

    rejected = RejectedRows()
    bad = np.zeros(m, dtype=bool)
    for reason in _REASONS:
        which = content[flags[reason] & ~bad]
        if which.size:
            rejected.add(line_numbers[which], reason, [lines.text(int(i)) for i in which])
        bad |= flags[reason]

    good = np.flatnonzero(~bad)
    if len(good) < m:
        keep = np.repeat(~bad, entries.sizes)
        index, value = index[keep], value[keep]
        indptr = np.zeros(len(good) + 1, dtype=np.int64)
        np.cumsum(entries.sizes[good], out=indptr[1:])
    rows = LibsvmRows(
        labels=(label[good] == 1.0).astype(np.float32),
        indptr=indptr,
        indices=index,
        values=value,
        lines=line_numbers[content[good]],
    )
    return ParsedBlock(rows=rows, rejected=rejected, lines=n, blank=n - m)


def _comment_mask(lines: Lines) -> np.ndarray:
    """Bytes from the first '#' of a line up to its newline."""
    hashes = np.flatnonzero(lines.data == _HASH)
    line = np.searchsorted(lines.ends, hashes)
    first = np.ones(len(line), dtype=bool)
    first[1:] = line[1:] != line[:-1]
    flips = np.zeros(lines.data.size, dtype=np.int8)
    flips[hashes[first]] = 1
    flips[lines.ends[line[first]]] = -1
    return np.cumsum(flips, dtype=np.int8).astype(bool)


def _colons(
    d: np.ndarray,
    in_token: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    is_feature: np.ndarray,
    fs: np.ndarray,
    fe: np.ndarray,
    comments: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Where the colon of each feature token (``fs``, ``fe``) is, and whether it has exactly one.

    In a well-formed block the k-th colon belongs to the k-th feature token, which a
    few comparisons confirm; only a block where that fails pays for assigning every
    colon to its token with a search.
    """
    colons = np.flatnonzero(d == _COLON)
    if comments:
        colons = colons[in_token[colons + 1]]
    if len(colons) == len(fs) and (colons >= fs).all() and (colons < fe).all():
        return colons, None
    owner = np.searchsorted(starts, colons, side="right") - 1
    first = np.ones(len(owner), dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    colon = ends.copy()
    colon[owner[first]] = colons[first]
    shaped = np.bincount(owner, minlength=len(starts)) == 1
    return colon[is_feature], shaped[is_feature]


@dataclass
class _Entries:
    """The ``index:value`` tokens of a block, row after row (``sizes`` per row)."""

    starts: np.ndarray
    ends: np.ndarray
    sizes: np.ndarray
    colon: np.ndarray  # position of the (first) colon; the token's end when it has none
    shaped: np.ndarray | None  # has exactly one colon; None when all have

    def without_qid(self, d: np.ndarray) -> _Entries:
        """Drop SVMlight's ``qid:N`` tokens, which are not features."""
        three = np.flatnonzero(self.colon - self.starts == 3)
        at = self.starts[three]
        qid = three[(d[at] == ord("q")) & (d[at + 1] == ord("i")) & (d[at + 2] == ord("d"))]
        if not qid.size:
            return self
        indptr = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=indptr[1:])
        keep = np.ones(len(self.starts), dtype=bool)
        keep[qid] = False
        return _Entries(
            starts=self.starts[keep],
            ends=self.ends[keep],
            sizes=self.sizes - np.bincount(_row_of(indptr, qid), minlength=len(self.sizes)),
            colon=self.colon[keep],
            shaped=None if self.shaped is None else self.shaped[keep],
        )

    def parse(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices, values, and the entries that are bad numbers (their index is 0)."""
        if self.shaped is None:
            starts, colon, ends = self.starts, self.colon, self.ends
        else:
            well = np.flatnonzero(self.shaped)
            starts, colon, ends = self.starts[well], self.colon[well], self.ends[well]
        index, index_ok = _parse_integers(d, starts, colon)
        value = _parse_floats(d, colon + 1, ends)
        ok = np.isfinite(value)
        if index_ok is not None:
            ok &= index_ok
        if self.shaped is None:
            return index, value, np.flatnonzero(~ok) if not ok.all() else np.zeros(0, dtype=np.int64)
        full_index = np.zeros(len(self.starts), dtype=np.int64)
        full_value = np.zeros(len(self.starts), dtype=np.float64)
        full_index[well], full_value[well] = index, value
        good = np.zeros(len(self.starts), dtype=bool)
        good[well] = ok
        return full_index, full_value, np.flatnonzero(~good)


def _row_of(indptr: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """The row of each entry, rows being ``indptr`` apart (some possibly empty)."""
    return np.searchsorted(indptr, entries, side="right") - 1


def _spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Byte spans of the block as an Arrow binary array, without copying any bytes.

    Spans are ordered and disjoint, so [s0, e0, s1, e1, ...] are valid offsets: the
    even elements are the spans, the odd ones the gaps between them, made null so that
    casts and regular expressions skip them.
    """
    k = len(starts)
    kind, dtype = (pa.binary(), np.int32) if data.size < 2**31 else (pa.large_binary(), np.int64)
    offsets = np.empty(2 * k, dtype=dtype)
    offsets[0::2] = starts
    offsets[1::2] = ends
    valid = np.full((2 * k + 6) // 8, 0x55, dtype=np.uint8)  # bits 0, 2, 4, ...: the even elements
    return pa.Array.from_buffers(kind, 2 * k - 1, [pa.py_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(data)])


def _cast(spans: pa.Array, kind: pa.DataType, dtype: type, pattern: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Cast the spans (the even elements); returns the values and which were well formed
    (None when all were)."""
    values, ok = _cast_elements(spans, kind, dtype, pattern)
    return values[0::2].copy(), None if ok is None else ok[0::2]


def _cast_elements(
    spans: pa.Array, kind: pa.DataType, dtype: type, pattern: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Values of all elements (the null gaps come out as anything), and which matched.

    The fast path casts everything at once. When a bad value makes that fail, the
    elements are halved until the failing stretches are short and only those pay for
    the regular expression, which costs many times a cast: a few bad rows in a big
    block leave the rest of it on the fast path.
    """
    try:
        # The system allocator keeps freed memory for the next piece; Arrow's default one
        # hands it back to the OS, and page-faulting it in again cost as much as the cast.
        parsed, ok = pc.cast(spans, kind, memory_pool=pa.system_memory_pool()), None
    except pa.ArrowInvalid:
        if len(spans) > _REGEX_SPANS:
            half = len(spans) // 4 * 2  # even, so both halves start on a span
            first, first_ok = _cast_elements(spans.slice(0, half), kind, dtype, pattern)
            second, second_ok = _cast_elements(spans.slice(half), kind, dtype, pattern)
            ok = np.concatenate([np.ones(len(first), dtype=bool) if first_ok is None else first_ok,
                                 np.ones(len(second), dtype=bool) if second_ok is None else second_ok])
            return np.concatenate([first, second]), ok
        match = pc.fill_null(pc.match_substring_regex(spans, pattern), False)
        parsed = pc.cast(pc.if_else(match, spans, pa.scalar(None, spans.type)), kind)
        ok = match.to_numpy(zero_copy_only=False)
    buffer = np.frombuffer(parsed.buffers()[1], dtype=dtype, count=parsed.offset + len(parsed))
    return buffer[parsed.offset :], ok


def _parse_floats(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Decimal floats of the spans; +inf where a span is not a number."""
    if not len(starts):
        return np.zeros(0, dtype=np.float64)
    values, ok = _cast(_spans(data, starts, ends), pa.float64(), np.float64, _FLOAT)
    return values if ok is None else np.where(ok, values, np.inf)


def _parse_integers(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Decimal integers of the spans (0 where not one), and which spans were ones (None: all)."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64), None
    values, ok = _cast(_spans(data, starts, ends), pa.int64(), np.int64, _INTEGER)
    if ok is None and values.min() > -_INDEX_LIMIT and values.max() < _INDEX_LIMIT:
        return values, None
    in_range = (values > -_INDEX_LIMIT) & (values < _INDEX_LIMIT)
    ok = in_range if ok is None else ok & in_range
    return np.where(ok, values, 0), ok


def _sort_rows(indptr: np.ndarray, index: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries ordered by index within each row, and the rows with an index twice.

    Only rows that are not strictly increasing already are sorted.
    """
    step = np.diff(index) <= 0
    if len(indptr) > 2:
        between = indptr[1:-1] - 1  # the step from a row's last entry to the next row's first
        step[between[(between >= 0) & (between < len(step))]] = False
    if not step.any():
        return index, value, np.zeros(0, dtype=np.int64)
    before = np.zeros(len(step) + 1, dtype=np.int64)  # before[j]: out-of-order steps among the first j
    np.cumsum(step, out=before[1:])
    last = len(step)
    rows = np.flatnonzero(before[np.clip(indptr[1:] - 1, 0, last)] > before[np.clip(indptr[:-1], 0, last)])
    sizes = indptr[rows + 1] - indptr[rows]
    rank = np.repeat(np.arange(len(rows)), sizes)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    where = np.repeat(indptr[rows] - offsets[:-1], sizes) + np.arange(offsets[-1])
    key = index[where]
    low, span = int(key.min()), int(key.max()) - int(key.min()) + 1
    if len(rows) * span < 2**62:
        # One integer key sorts several times faster than lexsort's two passes.
        order = np.argsort(rank * span + (key - low), kind="stable")
    else:
        order = np.lexsort((key, rank))
    index, value = index.copy(), value.copy()
    index[where], value[where] = key[order], value[where[order]]
    twice = (rank[1:] == rank[:-1]) & (index[where[1:]] == index[where[:-1]])
    return index, value, rows[np.unique(rank[1:][twice])]
