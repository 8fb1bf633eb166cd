"""The binary wire format shared by the server and its clients.

Every message is one frame: a fixed 16-byte header followed by ``body_length`` bytes.
The hot path (pull, push, push_pull, get/set of a table) carries numpy arrays as raw
little-endian buffers laid out at 8-byte aligned offsets, so both ends can view them
with ``np.frombuffer`` instead of parsing; control operations carry small JSON
objects. The package docstring (``ps_service/__init__.py``) is the reference for the
layout; this module is its only implementation.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from ps_service.errors import ProtocolError

MAGIC = b"CRPS"
VERSION = 2
HEADER = struct.Struct("<4sBBBBII")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024

FLAG_STOP = 0x01

KEY_DTYPES = {4: np.dtype("<i4"), 8: np.dtype("<i8")}
VALUE_DTYPE = np.dtype("<f4")

_TABLE_REQUEST = struct.Struct("<HBxIII")
_HELLO = struct.Struct("<II")
_ARRAY = struct.Struct("<II")
_ALIGNMENT = 8
_ZEROS = bytes(_ALIGNMENT)

Buffer = bytes | bytearray | memoryview


class Opcode(IntEnum):
    HELLO = 1
    AUTH = 2
    CREATE_TABLE = 16
    PULL = 17
    PUSH = 18
    PUSH_PULL = 19
    GET_TABLE = 20
    SET_TABLE = 21
    DROP_TABLE = 22
    REPORT = 32
    STATUS = 33
    STOP = 34
    SHUTDOWN = 35
    REGISTER = 36
    HEARTBEAT = 37
    DEREGISTER = 38


class Status(IntEnum):
    OK = 0
    ERROR = 1
    AUTH_FAILED = 2


class FrameHeader(NamedTuple):
    opcode: int
    flags: int
    status: int
    request_id: int
    body_length: int


class Hello(NamedTuple):
    """The greeting: where this server sits in its group, and the nonce to sign (empty: no token)."""

    shard: int
    shards: int
    nonce: bytes


class TableRequest(NamedTuple):
    """A decoded hot-path body; which arrays are present depends on the opcode."""

    table: str
    keys: np.ndarray | None
    values: np.ndarray | None
    next_keys: np.ndarray | None


def encode_header(
    opcode: int, request_id: int, body_length: int, *, status: int = Status.OK, flags: int = 0
) -> bytes:
    return HEADER.pack(MAGIC, VERSION, opcode, flags, status, request_id, body_length)


SERVER_LIMIT_HINT = "split the request, or start the server with a larger --max-frame-bytes"


def decode_header(
    data: Buffer, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, limit_hint: str = SERVER_LIMIT_HINT
) -> FrameHeader:
    """Check a header before its body is read, so a bad peer never makes us allocate.

    ``limit_hint`` tells the reader of a too-large frame whose ``max_frame_bytes`` refused it
    and how to raise it: the server's by default, the client's when a client reads a reply.
    """
    magic, version, opcode, flags, status, request_id, body_length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"not a cirrus parameter-server frame (magic {bytes(magic)!r}, expected {MAGIC!r}); "
            "check that the address points at a parameter server"
        )
    if version != VERSION:
        raise ProtocolError(
            f"peer speaks protocol version {version}, this side speaks {VERSION}; "
            "run the same ps_service version on the server and the workers"
        )
    if HEADER_SIZE + body_length > max_frame_bytes:
        raise ProtocolError(
            f"frame of {HEADER_SIZE + body_length} bytes exceeds the maximum of "
            f"{max_frame_bytes} bytes; {limit_hint}"
        )
    return FrameHeader(opcode, flags, status, request_id, body_length)


def frame_length(parts: Sequence[Buffer]) -> int:
    return sum(len(part) for part in parts)


def raw(array: np.ndarray) -> memoryview:
    """A flat byte view of a contiguous array, so ``len()`` counts bytes for every consumer."""
    return memoryview(np.ascontiguousarray(array)).cast("B")


def _pad(length: int) -> bytes:
    return _ZEROS[: -length % _ALIGNMENT]


def encode_table_request(
    table: str,
    *,
    keys: np.ndarray | None = None,
    values: np.ndarray | None = None,
    next_keys: np.ndarray | None = None,
) -> list[Buffer]:
    """Lay out name, keys, values and next keys, each starting 8-byte aligned.

    ``keys`` and ``next_keys`` must be int32 or int64 (little-endian) arrays of the
    same dtype, ``values`` a float32 array of shape (rows, width).
    """
    name = table.encode()
    key_array = keys if keys is not None else next_keys
    key_size = 0 if key_array is None else key_array.dtype.itemsize
    if values is not None:
        rows, width = values.shape
    else:
        rows, width = (0 if keys is None else len(keys)), 0
    next_count = 0 if next_keys is None else len(next_keys)
    parts: list[Buffer] = [
        _TABLE_REQUEST.pack(len(name), key_size, rows, width, next_count),
        name + _pad(len(name)),
    ]
    for array in (keys, values, next_keys):
        if array is not None and array.size:
            view = raw(array)
            parts.append(view)
            if len(view) % _ALIGNMENT:
                parts.append(_pad(len(view)))
    return parts


def decode_table_request(body: Buffer) -> TableRequest:
    """Views into ``body`` (no copies); they stay valid as long as ``body`` does."""
    if len(body) < _TABLE_REQUEST.size:
        raise ProtocolError(f"table request body of {len(body)} bytes is shorter than its header")
    name_length, key_size, rows, width, next_count = _TABLE_REQUEST.unpack_from(body)
    if key_size and key_size not in KEY_DTYPES:
        raise ProtocolError(f"keys must be 4 or 8 bytes wide, the request says {key_size}")
    offset = _TABLE_REQUEST.size
    table = _decode_name(body, offset, name_length)
    offset += name_length + -name_length % _ALIGNMENT
    keys = next_keys = values = None
    if key_size:
        keys, offset = _view(body, offset, KEY_DTYPES[key_size], rows)
    if width:
        values, offset = _view(body, offset, VALUE_DTYPE, rows * width)
        values = values.reshape(rows, width)
    if key_size:
        next_keys, offset = _view(body, offset, KEY_DTYPES[key_size], next_count)
    if offset != len(body):
        raise ProtocolError(
            f"table request body is {len(body)} bytes but its header describes {offset}"
        )
    return TableRequest(table, keys, values, next_keys)


def _decode_name(body: Buffer, offset: int, length: int) -> str:
    if offset + length > len(body):
        raise ProtocolError("table request body is shorter than the table name it announces")
    try:
        return bytes(body[offset : offset + length]).decode()
    except UnicodeDecodeError as error:
        raise ProtocolError(f"table name is not valid UTF-8: {error}") from None


def _view(body: Buffer, offset: int, dtype: np.dtype, count: int) -> tuple[np.ndarray, int]:
    """A view of ``count`` items at ``offset`` and the aligned offset after them."""
    end = offset + count * dtype.itemsize
    if end > len(body):
        raise ProtocolError(
            f"table request body of {len(body)} bytes is too short for {count} {dtype.name} items"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array, end + -end % _ALIGNMENT


def encode_array(values: np.ndarray) -> list[Buffer]:
    rows, width = values.shape
    header = _ARRAY.pack(rows, width)
    return [header, raw(values)] if values.size else [header]


def decode_array(body: Buffer) -> np.ndarray:
    """A fresh (rows, width) float32 array, copied out so the receive buffer can be reused."""
    if len(body) < _ARRAY.size:
        raise ProtocolError(f"array body of {len(body)} bytes is shorter than its header")
    rows, width = _ARRAY.unpack_from(body)
    expected = _ARRAY.size + rows * width * VALUE_DTYPE.itemsize
    if len(body) != expected:
        raise ProtocolError(f"array body is {len(body)} bytes, its header describes {expected}")
    flat = np.frombuffer(body, dtype=VALUE_DTYPE, count=rows * width, offset=_ARRAY.size)
    return flat.reshape(rows, width).astype(np.float32)


def encode_hello(shard: int, shards: int, nonce: bytes = b"") -> bytes:
    return _HELLO.pack(shard, shards) + nonce


def decode_hello(body: Buffer) -> Hello:
    if len(body) < _HELLO.size:
        raise ProtocolError(f"greeting of {len(body)} bytes is shorter than its {_HELLO.size}-byte header")
    shard, shards = _HELLO.unpack_from(body)
    return Hello(shard, shards, bytes(body[_HELLO.size:]))


def encode_json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def decode_json(body: Buffer) -> dict[str, Any]:
    try:
        document = json.loads(bytes(body)) if len(body) else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # nested too deep to parse
        raise ProtocolError(f"control body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"control body must be a JSON object, got {type(document).__name__}")
    return document


def encode_text(message: str) -> bytes:
    return message.encode()


def decode_text(body: Buffer) -> str:
    return bytes(body).decode(errors="replace")
