"""Seeded, vectorised 64-bit hashing of strings and numbers.

Feature hashing must give the same bucket on every machine and in every process
(Python's ``hash`` is salted per process), and it must be fast enough that hashing
26 categorical columns is not the bottleneck of preprocessing. So the hash is defined
here, on bytes, and computed with numpy over whole Arrow string arrays:

    h = fmix64(seed ^ SEED_SALT)
    for each 8-byte little-endian word w of the UTF-8 value (the last one zero-padded;
    the empty string is one zero word):
        h = fmix64(h ^ w)
    hash = fmix64(h ^ len(value))

``fmix64`` is MurmurHash3's 64-bit finaliser. ``hash_bytes_reference`` spells the same
function out in plain Python; it is the definition, and tests hold the two together.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MASK64 = (1 << 64) - 1
SEED_SALT = 0x9E3779B97F4A7C15
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
# WORD_MASKS[k] keeps the low k bytes of a word (k >= 8 keeps all of it).
WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [MASK64], dtype=np.uint64)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser on a uint64 array (wrapping arithmetic); ``h`` is left as it was."""
    h = h ^ (h >> _S33)
    _fmix64_rest(h, np.empty_like(h))
    return h


def _fmix64_inplace(h: np.ndarray, scratch: np.ndarray) -> None:
    """fmix64 written into ``h`` itself, with ``scratch`` (same shape) for the shifts: the hot
    loops hash millions of words a split, and a fresh array per step costs as much as the step."""
    np.right_shift(h, _S33, out=scratch)
    h ^= scratch
    _fmix64_rest(h, scratch)


def _fmix64_rest(h: np.ndarray, scratch: np.ndarray) -> None:
    h *= _C1
    np.right_shift(h, _S33, out=scratch)
    h ^= scratch
    h *= _C2
    np.right_shift(h, _S33, out=scratch)
    h ^= scratch


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    h ^= h >> 33
    return h


def derive_seed(seed: int, *salts: int) -> int:
    """A new 64-bit seed from a base seed and small integers (e.g. a column number)."""
    h = _fmix64_int((seed ^ SEED_SALT) & MASK64)
    for salt in salts:
        h = _fmix64_int(h ^ (salt & MASK64))
    return h


def hash_bytes_reference(value: bytes, seed: int) -> int:
    """The definition of the string hash, one value at a time (for tests and docs)."""
    h = _fmix64_int((seed ^ SEED_SALT) & MASK64)
    for i in range(0, max(len(value), 1), 8):
        h = _fmix64_int(h ^ int.from_bytes(value[i : i + 8].ljust(8, b"\0"), "little"))
    return _fmix64_int(h ^ len(value))


def hash_strings(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """The hash of every value of an Arrow string or binary array, as uint64; nulls hash as ''."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_dtype = np.int32
    elif pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_dtype = np.int64
    else:
        raise TypeError(f"hash_strings needs a string or binary array, got {values.type}")
    n = len(values)
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_dtype)[values.offset : values.offset + n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
    return hash_spans(data, offsets[:-1], offsets[1:] - offsets[:-1], seed)


def hash_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seed: int) -> np.ndarray:
    """The hash of every byte span data[start : start + length], as uint64.

    Spans may lie anywhere in ``data`` (fields of text lines need not be copied out).
    """
    starts, lengths = np.asarray(starts), np.asarray(lengths)
    return hash_span_columns(data, starts[:, None], lengths[:, None], [seed])[:, 0]


def hash_span_columns(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Column j is ``hash_spans(data, starts[:, j], lengths[:, j], seeds[j])``, for (rows, k)
    spans such as some fields of every line.

    The work goes a band of rows at a time: a row's spans are read together, and the
    band's bytes stay in cache while all their words are hashed. One column at a time
    over a whole block would fetch every line from memory again for every column and
    every word.
    """
    n, k = starts.shape
    out = np.empty((n, k), dtype=np.uint64)
    if not out.size:
        return out
    reader = WordReader(data)
    first = np.array([_fmix64_int((seed ^ SEED_SALT) & MASK64) for seed in seeds], dtype=np.uint64)
    words = max((int(lengths.max()) + 7) // 8, 1)
    band = max(_BAND // (k * words), _STEP // k, 1)
    for lo in range(0, n, band):
        rows = slice(lo, lo + band)
        out[rows] = _hash_band(reader, np.ascontiguousarray(starts[rows], dtype=np.int64),
                               np.ascontiguousarray(lengths[rows], dtype=np.int64), first)
    return out


# A band holds about _BAND words, so that they and their bytes stay in cache, but at
# least _STEP spans, so that each vectorised step is long enough to amortise numpy's
# call overhead (long spans such as whole lines have many words and few rows).
_BAND = 1 << 16
_STEP = 1 << 14


def _hash_band(reader: WordReader, starts: np.ndarray, lengths: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The hashes of a band of (rows, k) spans: the definition, one word index at a time."""
    last = np.maximum((lengths + 7) >> 3, 1) - 1  # each span's last word
    most, full = int(last.max()) + 1, int(last.min())  # words [0, full) are whole in every span
    words = reader.at(starts[None] + 8 * np.arange(most)[:, None, None])
    scratch = np.empty_like(starts, dtype=np.uint64)
    h = None
    for w in range(most):
        word = words[w]
        if w >= full:  # some span ends here (keep its bytes only) or has ended (it keeps its h)
            word &= WORD_MASKS[np.clip(lengths - 8 * w, 0, 8)]
        if h is None:
            h = word ^ first
            _fmix64_inplace(h, scratch)
        elif w < full:
            h ^= word
            _fmix64_inplace(h, scratch)
        else:
            word ^= h
            _fmix64_inplace(word, scratch)
            h = np.where(w <= last, word, h)
    h ^= lengths.astype(np.uint64)
    _fmix64_inplace(h, scratch)
    return h


class WordReader:
    """8-byte little-endian words read at any byte offset of a block, as uint64.

    A view of the block, not a copy: the unaligned read at offset p is element p of a
    stride-1 view. A word that would run past the end is read from the last 8 bytes and
    shifted down, which zero-fills it as the hash definition's padding does.
    """

    def __init__(self, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if len(data) < 8:
            data = np.concatenate([data, np.zeros(8 - len(data), dtype=np.uint8)])
        self.last = len(data) - 8
        self.words = np.ndarray(shape=(self.last + 1,), dtype="<u8", buffer=data, strides=(1,))

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The words at ``positions`` (a new array, free to be modified)."""
        try:
            return self.words[positions]  # numpy checks the bounds as it gathers
        except IndexError:
            pass
        overhang = np.clip(positions - self.last, 0, 7).astype(np.uint64)
        return self.words[np.minimum(positions, self.last)] >> (overhang << np.uint64(3))


def hash_float64(values: np.ndarray, seed: int) -> np.ndarray:
    """Hash of float64 values by their bits (all NaNs alike), for row identities."""
    bits = np.where(np.isnan(values), np.nan, values).astype(np.float64).view(np.uint64)
    return fmix64(bits ^ np.uint64(derive_seed(seed)))


def hash_rows(numbers: np.ndarray, hashed: np.ndarray) -> np.ndarray:
    """One hash per row of a table: ``numbers`` (n, k) float64 (label and numeric columns, NaN
    where missing) and ``hashed`` (n, m) uint64 (categorical values, already hashed).

    Each value's 64 bits (of the number, with one NaN and one zero; or its hash) are
    multiplied by an odd constant of its column and summed, wrapping, and the sum goes
    through fmix64: two integer matrix-vector products, cheap beside hashing the text
    again, and the same for the same values however they were written. A product keeps
    only what the low bits of a value say, and a small number says everything in its
    high bits (exponent, first digits), so those are folded down first.
    """
    numbers = np.asarray(numbers, dtype=np.float64)
    bits = np.where(np.isnan(numbers), np.nan, numbers + 0.0).view(np.uint64)  # + 0.0: -0.0 is 0.0
    bits ^= bits >> np.uint64(29)
    bits ^= bits >> np.uint64(17)
    k, m = numbers.shape[1], hashed.shape[1]
    h = bits @ _ROW_CONSTANTS[:k] if k else np.zeros(len(numbers), dtype=np.uint64)
    if m:
        h += np.ascontiguousarray(hashed, dtype=np.uint64) @ _ROW_CONSTANTS[k : k + m]
    return fmix64(h ^ np.uint64(k << 32 | m))


def _row_constants(count: int) -> np.ndarray:
    return np.array([derive_seed(0x524F57, j) | 1 for j in range(count)], dtype=np.uint64)


_ROW_CONSTANTS = _row_constants(1 << 12)  # columns of a row hash, at most (and a small table)


def combine_columns(columns: list[np.ndarray]) -> np.ndarray:
    """One hash per row from per-column uint64 hashes; column order matters."""
    h = np.zeros(len(columns[0]) if columns else 0, dtype=np.uint64)
    for i, col in enumerate(columns):
        h = h * np.uint64(0x100000001B3) + fmix64(col ^ np.uint64(derive_seed(i)))
    return fmix64(h)


def unit_interval(h: np.ndarray, seed: int) -> np.ndarray:
    """Seeded floats uniform on [0, 1), one per uint64 hash (from the top 53 bits)."""
    mixed = fmix64(h ^ np.uint64(derive_seed(seed)))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
