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
# _WORD_MASKS[k] keeps the low k bytes of a word (k >= 8 keeps all of it).
_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [MASK64], dtype=np.uint64)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser on a uint64 array (wrapping arithmetic, in place-safe)."""
    h = h ^ (h >> _S33)
    h = h * _C1
    h ^= h >> _S33
    h *= _C2
    h ^= h >> _S33
    return h


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
    n = len(starts)
    if len(data) < 8:
        data = np.concatenate([data, np.zeros(8 - len(data), dtype=np.uint8)])
    data = np.ascontiguousarray(data)
    # Unaligned 8-byte reads at every offset, as a view: no copy of the block.
    words_at = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    last = len(data) - 8

    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    h = np.full(n, _fmix64_int(seed ^ SEED_SALT), dtype=np.uint64)
    longest = int(lengths.max()) if n else 0
    if longest > 8:
        # Longer values first, so the rows still hashing a word p are a prefix.
        order = np.argsort(-lengths, kind="stable")
        starts, lengths = starts[order], lengths[order]
    for word in range(0, max((longest + 7) // 8, 1)):
        active = n if word == 0 else int(np.count_nonzero(lengths > 8 * word))
        pos = starts[:active] + 8 * word
        # A word that would run past the end is read from the last 8 bytes and shifted
        # down, which zero-fills it as the definition's padding does.
        overhang = np.clip(pos - last, 0, 7).astype(np.uint64)
        w = words_at[np.minimum(pos, last)] >> (overhang * np.uint64(8))
        if longest < 8 * (word + 1) or (lengths[:active] < 8 * (word + 1)).any():
            w = w & _WORD_MASKS[np.clip(lengths[:active] - 8 * word, 0, 8)]
        h[:active] = fmix64(h[:active] ^ w)
    h = fmix64(h ^ lengths.astype(np.uint64))
    if longest > 8:
        unsorted = np.empty_like(h)
        unsorted[order] = h
        h = unsorted
    return h


def hash_float64(values: np.ndarray, seed: int) -> np.ndarray:
    """Hash of float64 values by their bits (all NaNs alike), for row identities."""
    bits = np.where(np.isnan(values), np.nan, values).astype(np.float64).view(np.uint64)
    return fmix64(bits ^ np.uint64(derive_seed(seed)))


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
