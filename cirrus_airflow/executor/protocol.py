"""The pipe protocol between the local Lambda runtime and its worker processes.

Messages are JSON documents, each preceded by its length as a 4-byte big-endian integer,
so a reader never has to guess where one message ends. The worker writes a marker line on
its stderr after each invocation, which tells the runtime that the invocation's log lines
have all arrived before it builds the log tail.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any

END_OF_INVOCATION_LOG = "\x00cirrus-local-lambda:end-of-invocation "

_LENGTH = struct.Struct(">I")


def send(stream: IO[bytes], message: dict[str, Any]) -> None:
    """Write one message and flush, so the peer sees it at once."""
    body = json.dumps(message).encode("utf-8")
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


def receive(stream: IO[bytes]) -> dict[str, Any] | None:
    """Read one message; None when the peer has gone (end of file, even in mid-message)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    return json.loads(body)
