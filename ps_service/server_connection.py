"""One client connection on the server: framing, the token handshake and back-pressure.

A buffered protocol rather than asyncio streams: the kernel copies each request into a
buffer the connection owns, and a request is answered inside the callback that received
it. Streams copied every body twice and resumed a task per request, which cost a worker
step about 0.1 ms of the server's CPU, on the same cores that run the workers.

What a request *does* is the host's business (:class:`ConnectionHost`, the server); this
module only turns bytes into frames and replies into bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ps_service.addresses import format_address
from ps_service.auth import DIGEST_BYTES, new_nonce, verify
from ps_service.errors import ProtocolError
from ps_service.protocol import (
    FLAG_STOP,
    HEADER,
    HEADER_SIZE,
    Buffer,
    FrameHeader,
    Opcode,
    Status,
    decode_header,
    encode_header,
    encode_hello,
    encode_text,
    frame_length,
)
from ps_service.workers import Registration

log = logging.getLogger(__name__)

# Receive buffers grow with the bytes that arrive, never with what a header announces.
_HANDSHAKE_BUFFER_BYTES = 1024  # a connection that has not authenticated holds no more
_INITIAL_BUFFER_BYTES = 64 * 1024  # a minibatch's request fits: 1,000 idle workers hold 64 MB
_MAX_KEPT_BUFFER_BYTES = 1024 * 1024  # larger, grown for a big frame: given back once it is answered
_COALESCE_BYTES = 64 * 1024


@dataclass
class Traffic:
    """Counters for the status call; keys_in counts pushed rows, keys_out pulled rows."""

    requests: int = 0
    errors: int = 0
    bad_frames: int = 0
    auth_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    keys_in: int = 0
    keys_out: int = 0


@dataclass
class Session:
    """What the host knows of a connection: who it is, when it last did something, which slot it holds."""

    peer: str
    last_activity: float = field(default_factory=time.monotonic)
    registration: Registration | None = None


@dataclass(frozen=True)
class ConnectionSettings:
    token: str | None
    max_frame_bytes: int
    handshake_timeout_s: float
    shard: int
    shards: int


class ConnectionHost(Protocol):
    """The server as its connections see it."""

    traffic: Traffic

    def dispatch(self, opcode: int, body: Buffer, session: Session) -> tuple[Status, list[Buffer], str | None]:
        """Run one request; returns the status, the reply's parts and the table it concerned."""

    def stop_requested(self, table: str | None) -> bool:
        """Whether a reply about ``table`` tells its worker to stop."""

    def connected(self, connection: ServerConnection) -> None:
        """A connection was accepted; the handshake starts."""

    def admitted(self, connection: ServerConnection) -> None:
        """The connection passed the handshake and may send requests."""

    def closed(self, connection: ServerConnection, admitted: bool) -> None:
        """The connection is gone, whatever the reason."""

    def shutdown_requested(self) -> None:
        """A client's SHUTDOWN was answered: stop serving."""


class ServerConnection(asyncio.BufferedProtocol):
    """Frames are parsed in place; a reply is written before the next frame is read.

    Until the handshake succeeds only an AUTH frame of exactly a digest's size is
    accepted, so an unauthenticated peer never makes the server allocate. When the
    client stops reading replies and the transport's buffer fills, reading pauses too
    (the protocol's equivalent of ``drain``), so a slow client cannot queue unbounded
    replies; the host's idle check closes one that stays stuck.
    """

    def __init__(self, host: ConnectionHost, settings: ConnectionSettings) -> None:
        self._host = host
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.session = Session(peer="?")
        self._transport: asyncio.Transport | None = None
        self._authenticated = False
        self._nonce = b""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._ending = False  # a refusal, a bad frame or a shutdown was answered: nothing more is read
        self._buffer = bytearray(_HANDSHAKE_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._header: FrameHeader | None = None  # the parsed header of the frame at the buffer's start

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.session.peer = _peer_name(transport.get_extra_info("peername"))
        self._host.connected(self)
        settings = self._settings
        if settings.token is None:
            self._write(Opcode.HELLO, 0, Status.OK, [encode_hello(settings.shard, settings.shards)])
            self._admit()
            return
        self._nonce = new_nonce()
        self._write(Opcode.HELLO, 0, Status.OK, [encode_hello(settings.shard, settings.shards, self._nonce)])
        self._handshake_timer = self._loop.call_later(settings.handshake_timeout_s, self._handshake_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):  # a frame larger than the buffer is arriving
            size = 2 * len(self._buffer)
            if self._header is not None:
                size = min(size, HEADER_SIZE + self._header.body_length)
            self._reserve(size)
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        self._process()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._transport_or_raise().pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        transport = self._transport_or_raise()
        if not transport.is_closing() and not self._ending:
            transport.resume_reading()
            self.session.last_activity = time.monotonic()
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("connection from %s ended: %r", self.session.peer, exc)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._host.closed(self, self._authenticated)
        if not self.closed.done():
            self.closed.set_result(None)

    # used by the host

    def close(self) -> None:
        """Close once the replies already written are sent."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, replies still buffered or not."""
        if self._transport is not None:
            self._transport.abort()

    # frames

    def _process(self) -> None:
        """Answer every complete frame in the buffer, then keep the partial one at its start."""
        start = 0
        while not self._writing_paused and not self._ending:
            view, header = self._view, self._header  # the view changes when the buffer grows
            if header is None:
                if self._filled - start < HEADER_SIZE:
                    break
                header = self._parse_header(view[start:start + HEADER_SIZE])
                if header is None:
                    return
            end = start + HEADER_SIZE + header.body_length
            if end > self._filled:
                self._header = header
                break
            self._header = None
            self.session.last_activity = time.monotonic()
            self._answer(header, view[start + HEADER_SIZE:end])
            start = end
        self._keep(start)

    def _parse_header(self, raw: memoryview) -> FrameHeader | None:
        """The header, or None once the frame has been refused and the connection is closing."""
        try:
            header = decode_header(raw, max_frame_bytes=self._settings.max_frame_bytes)
        except ProtocolError as error:
            if not self._authenticated:
                self._refuse(str(error))
            else:
                self._reject_frame(raw, error)
            return None
        if self._authenticated:
            return header
        if header.opcode != Opcode.AUTH:
            self._refuse("the client sent no token")
        elif header.body_length != DIGEST_BYTES:
            self._refuse(f"the authentication answer must be {DIGEST_BYTES} bytes")
        else:
            return header
        return None

    def _answer(self, header: FrameHeader, body: memoryview) -> None:
        if not self._authenticated:
            self._authenticate(header, body)
            return
        host = self._host
        traffic = host.traffic
        traffic.requests += 1
        traffic.bytes_in += HEADER_SIZE + header.body_length
        if self.session.registration is not None:
            self.session.registration.last_heartbeat = time.time()
        status, parts, table = host.dispatch(header.opcode, body, self.session)
        self._write(header.opcode, header.request_id, status, parts, host.stop_requested(table))
        if not self._writing_paused:
            self.session.last_activity = time.monotonic()
        if header.opcode == Opcode.SHUTDOWN and status == Status.OK:
            self._ending = True  # nothing after a shutdown is read or run
            self._transport_or_raise().pause_reading()
            host.shutdown_requested()

    def _keep(self, start: int) -> None:
        """Move a partial frame to the buffer's start. The buffer grows in ``get_buffer`` as
        a large frame's bytes arrive (doubling), not here for the size its header announces:
        a peer that sends headers alone must not make the server allocate their bodies."""
        remaining = self._filled - start
        if start:
            # bytes(): a slice assignment from a view of the same buffer may not overlap safely
            self._buffer[:remaining] = bytes(self._view[start:self._filled])
            self._filled = remaining
        if not remaining and len(self._buffer) > _MAX_KEPT_BUFFER_BYTES:
            self._buffer = bytearray(_INITIAL_BUFFER_BYTES)  # grown for a big frame: give it back
            self._view = memoryview(self._buffer)

    def _reserve(self, size: int) -> None:
        """A new buffer of ``size`` bytes holding what has arrived: a bytearray with a view
        on it (``_view``) cannot be resized in place."""
        buffer = bytearray(size)
        buffer[:self._filled] = self._view[:self._filled]
        self._buffer, self._view = buffer, memoryview(buffer)

    # the handshake

    def _authenticate(self, header: FrameHeader, digest: memoryview) -> None:
        if not verify(self._settings.token or "", self._nonce, bytes(digest)):
            self._refuse("the token does not match the server's")
            return
        self._write(Opcode.AUTH, header.request_id, Status.OK, [])
        self._admit()

    def _admit(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._authenticated = True
        self._reserve(_INITIAL_BUFFER_BYTES)
        self._host.admitted(self)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self._authenticated and not self._ending:
            self._refuse(f"no authentication within {self._settings.handshake_timeout_s} s")

    def _refuse(self, reason: str) -> None:
        self._host.traffic.auth_failures += 1
        log.warning("refused connection from %s: %s", self.session.peer, reason)
        message = f"authentication failed: {reason}; connect with the run's token"
        self._write(Opcode.AUTH, 0, Status.AUTH_FAILED, [encode_text(message)], stop=False)
        self._end()

    def _reject_frame(self, raw: memoryview, error: ProtocolError) -> None:
        """Answer a broken header once, then drop the connection: its stream cannot be resynchronised."""
        traffic = self._host.traffic
        traffic.errors += 1
        traffic.bad_frames += 1
        log.warning("closing connection after a bad frame: %s", error)
        fields = HEADER.unpack(raw)
        opcode, request_id = fields[2], fields[5]
        self._write(opcode, request_id, Status.ERROR, [encode_text(str(error))])
        self._end()

    def _end(self) -> None:
        self._ending = True
        self._transport_or_raise().close()

    # replies

    def _write(
        self, opcode: int, request_id: int, status: int, parts: Sequence[Buffer], stop: bool | None = None,
    ) -> None:
        """Small replies go out in one write (one system call); large ones without a joining copy."""
        if stop is None:
            stop = self._host.stop_requested(None)
        max_frame_bytes = self._settings.max_frame_bytes
        length = frame_length(parts)
        if HEADER_SIZE + length > max_frame_bytes:
            status = Status.ERROR
            parts = [encode_text(
                f"reply of {HEADER_SIZE + length} bytes exceeds the frame limit of {max_frame_bytes} "
                "bytes; pull fewer keys or start the server with a larger --max-frame-bytes"
            )]
            length = frame_length(parts)
        header = encode_header(opcode, request_id, length, status=status, flags=FLAG_STOP if stop else 0)
        self._host.traffic.bytes_out += HEADER_SIZE + length
        transport = self._transport_or_raise()
        if length <= _COALESCE_BYTES:
            transport.write(b"".join((header, *parts)))
            return
        transport.write(header)
        for part in parts:
            transport.write(part)

    def _transport_or_raise(self) -> asyncio.Transport:
        if self._transport is None:
            raise RuntimeError("the connection is not made yet")
        return self._transport


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return str(peer)
