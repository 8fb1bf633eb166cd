"""A split as a sequence of blocks of whole lines, each of bounded size.

A worker parses a block at a time, so its memory is set by the block size, not by
the input: a plain-text split is one block (the planner keeps splits small), and a
gzip file, which one worker must read from start to end, is decompressed as a stream
and cut into blocks on line ends.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

from cirrus_airflow.formats.text import CorruptInputError, read_line_range
from cirrus_airflow.storage import Storage

BLOCK_BYTES = 32 << 20
_GZIP_READ = 8 << 20


def line_blocks(storage: Storage, source: dict, *, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The lines of a split (``{"uri", "start", "end", "size", "compressed"}``), in blocks."""
    if source.get("compressed", False):
        yield from gzip_line_blocks(storage, source["uri"], block_bytes=block_bytes)
    else:
        yield read_line_range(storage, source["uri"], source["start"], source["end"], source["size"])


def gzip_line_blocks(storage: Storage, uri: str, *, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Decompress a gzip file as a stream and yield its text in blocks that end on a newline
    (the last one may not), each about ``block_bytes`` long (longer only for a longer line)."""
    rest = b""
    for chunk in _decompressed(storage, uri, block_bytes):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def _decompressed(storage: Storage, uri: str, size: int) -> Iterator[bytes]:
    try:
        with storage.open_input(uri, buffer_size=_GZIP_READ) as raw, gzip.GzipFile(fileobj=raw) as stream:
            while chunk := stream.read(size):
                yield chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorruptInputError(f"{uri}: cannot decompress this gzip file, is it corrupt or truncated? ({exc})") from None
