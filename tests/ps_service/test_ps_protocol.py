"""The wire format: what one side encodes, the other decodes, and broken frames are refused."""

from __future__ import annotations

import numpy as np
import pytest

from ps_service.errors import ProtocolError
from ps_service.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    FrameHeader,
    Opcode,
    Status,
    decode_array,
    decode_header,
    decode_json,
    decode_table_request,
    encode_array,
    encode_header,
    encode_json,
    encode_table_request,
    frame_length,
)


def joined(parts: list) -> bytes:
    body = b"".join(parts)
    assert len(body) == frame_length(parts)
    return body


def test_header_round_trip_keeps_every_field():
    data = encode_header(Opcode.PUSH_PULL, 0xDEADBEEF, 12345, status=Status.ERROR, flags=1)
    assert len(data) == HEADER_SIZE == 16
    assert decode_header(data) == FrameHeader(Opcode.PUSH_PULL, 1, Status.ERROR, 0xDEADBEEF, 12345)


def test_header_with_bad_magic_is_refused():
    data = HEADER.pack(b"HTTP", VERSION, Opcode.PULL, 0, 0, 1, 0)
    with pytest.raises(ProtocolError, match="magic"):
        decode_header(data)


def test_header_with_other_version_is_refused_naming_both_versions():
    data = HEADER.pack(MAGIC, VERSION + 1, Opcode.PULL, 0, 0, 1, 0)
    with pytest.raises(ProtocolError, match=f"version {VERSION + 1}.*speaks {VERSION}"):
        decode_header(data)


def test_oversized_frame_is_refused_before_its_body_is_read():
    data = encode_header(Opcode.PUSH, 1, 1000)
    assert decode_header(data, max_frame_bytes=HEADER_SIZE + 1000).body_length == 1000
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decode_header(data, max_frame_bytes=HEADER_SIZE + 999)


@pytest.mark.parametrize("key_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("rows", [0, 1, 3, 800])
def test_push_pull_request_round_trip(key_dtype, rows):
    rng = np.random.default_rng(rows)
    keys = rng.integers(0, 2**31 - 1, rows).astype(key_dtype)
    values = rng.standard_normal((rows, 3)).astype(np.float32)
    next_keys = rng.integers(0, 1000, 5).astype(key_dtype)
    body = joined(encode_table_request("tåble", keys=keys, values=values, next_keys=next_keys))
    assert len(body) % 8 == 0
    request = decode_table_request(body)
    assert request.table == "tåble"
    assert request.keys.dtype == key_dtype
    np.testing.assert_array_equal(request.keys, keys)
    np.testing.assert_array_equal(request.values, values)
    np.testing.assert_array_equal(request.next_keys, next_keys)


def test_pull_request_carries_only_keys():
    keys = np.array([5, 7, 9], dtype=np.int32)
    request = decode_table_request(joined(encode_table_request("w", keys=keys)))
    np.testing.assert_array_equal(request.keys, keys)
    assert request.values is None
    assert len(request.next_keys) == 0


def test_whole_table_requests_carry_no_keys():
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    get = decode_table_request(joined(encode_table_request("w")))
    assert (get.table, get.keys, get.values, get.next_keys) == ("w", None, None, None)
    put = decode_table_request(joined(encode_table_request("w", values=values)))
    assert put.keys is None
    np.testing.assert_array_equal(put.values, values)


def test_arrays_in_a_request_are_aligned_views_of_the_body():
    keys = np.array([1, 2, 3], dtype=np.int32)
    values = np.ones((3, 1), dtype=np.float32)
    body = joined(encode_table_request("abc", keys=keys, values=values, next_keys=keys))
    request = decode_table_request(body)
    for array in (request.keys, request.values, request.next_keys):
        assert not array.flags.owndata
        assert array.ctypes.data % 8 == np.frombuffer(body, np.uint8).ctypes.data % 8


def test_truncated_table_request_is_refused():
    body = joined(encode_table_request("w", keys=np.arange(10, dtype=np.int64)))
    with pytest.raises(ProtocolError, match="too short"):
        decode_table_request(body[:-8])
    with pytest.raises(ProtocolError, match="shorter than its header"):
        decode_table_request(body[:10])


def test_table_request_with_trailing_bytes_is_refused():
    body = joined(encode_table_request("w", keys=np.arange(2, dtype=np.int64)))
    with pytest.raises(ProtocolError, match="header describes"):
        decode_table_request(body + bytes(8))


def test_table_request_with_bad_key_size_is_refused():
    body = bytearray(joined(encode_table_request("w", keys=np.arange(2, dtype=np.int64))))
    body[2] = 3
    with pytest.raises(ProtocolError, match="4 or 8 bytes"):
        decode_table_request(bytes(body))


def test_array_reply_round_trip_returns_an_independent_copy():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    buffer = bytearray(joined(encode_array(values)))
    decoded = decode_array(memoryview(buffer))
    buffer[8:] = bytes(len(buffer) - 8)
    np.testing.assert_array_equal(decoded, values)
    assert decoded.dtype == np.float32 and decoded.flags.writeable


def test_empty_array_reply_keeps_its_width():
    decoded = decode_array(joined(encode_array(np.empty((0, 4), dtype=np.float32))))
    assert decoded.shape == (0, 4)


def test_array_reply_of_wrong_length_is_refused():
    body = joined(encode_array(np.ones((2, 2), dtype=np.float32)))
    with pytest.raises(ProtocolError, match="header describes"):
        decode_array(body[:-4])


def test_json_round_trip_and_rejection_of_non_objects():
    document = {"name": "w", "size": 10, "nested": {"x": [1, 2.5]}}
    assert decode_json(encode_json(document)) == document
    assert decode_json(b"") == {}
    with pytest.raises(ProtocolError, match="JSON object"):
        decode_json(b"[1, 2]")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_json(b"{nope")
