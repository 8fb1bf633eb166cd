"""A blocking socket to one server process: handshake, then requests and their replies.

Workers run plain Python loops, so the client is synchronous. Each request is sent
with a single ``sendmsg`` of header and array buffers (no joining copy) and each reply
is received with ``recv_into`` a buffer that is allocated once and reused, which keeps
the per-request cost to two system calls in the common case.

A caller may send a request before reading the reply to the one before (the server
answers each connection's requests in order); the replies are then read in the order
of their requests, and bytes of the next reply that arrive with one are kept for it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from ps_service.addresses import format_address, parse_address
from ps_service.auth import NONCE_BYTES, sign
from ps_service.errors import ProtocolError, PSAuthError, PSConnectionError, PSError
from ps_service.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FLAG_STOP,
    HEADER_SIZE,
    Buffer,
    FrameHeader,
    Opcode,
    Status,
    decode_header,
    decode_hello,
    decode_text,
    encode_header,
    frame_length,
)

T = TypeVar("T")

_INITIAL_BUFFER_BYTES = 256 * 1024
_MAX_KEPT_BUFFER_BYTES = 16 * 1024 * 1024
_CLIENT_LIMIT_HINT = (
    "this client's max_frame_bytes refused the reply: pass a larger max_frame_bytes to PSClient, "
    "or request fewer rows at once"
)


def _no_body(body: memoryview) -> None:
    return None


class Connection:
    """Safe to share between threads (requests are serialised), though one per thread is faster."""

    def __init__(
        self,
        address: str | tuple[str, int],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port = parse_address(address)
        self._tls = tls
        self.address = format_address(self._host, self._port)
        self.stop_requested = False
        self.shard, self.shards = 0, 1  # where the server sits in its group, from its greeting
        self._timeout = timeout
        self._max_frame_bytes = max_frame_bytes
        self._lock = threading.Lock()
        self._buffer = bytearray(_INITIAL_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._surplus = b""  # bytes of the next reply that came with the last one
        self._request_id = 0
        self._awaiting: deque[int] = deque()  # ids of the requests sent and not answered yet
        self._sock: socket.socket | None = self._connect()
        try:
            self._authenticate(token)
        except BaseException:
            self.close()
            raise

    def request(self, opcode: int, parts: Sequence[Buffer], decode: Callable[[memoryview], T] = _no_body) -> T:
        """Send one frame and return ``decode(reply body)``; the body is only valid inside ``decode``."""
        with self._lock:
            self.begin(opcode, parts)
            return self.finish(opcode, decode)

    @property
    def lock(self) -> threading.Lock:
        """Held around :meth:`begin` and :meth:`finish` by callers that pipeline over several servers."""
        return self._lock

    def begin(self, opcode: int, parts: Sequence[Buffer]) -> None:
        """Send a request without waiting for its reply; the caller holds :attr:`lock`.

        A client of a sharded server sends every shard its part first and only then
        collects the replies, so the shards work on one logical request at the same time;
        a worker sends its next request before it reads the reply to the last one.
        """
        length = self.check_length(parts)
        sock = self._open_socket()
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        header = encode_header(opcode, self._request_id, length)
        with self._translated_errors():
            self._send(sock, [header, *parts], HEADER_SIZE + length)
        self._awaiting.append(self._request_id)

    def check_length(self, parts: Sequence[Buffer]) -> int:
        """The body length, once it is known to fit this client's frame limit."""
        length = frame_length(parts)
        if HEADER_SIZE + length > self._max_frame_bytes:
            raise ValueError(
                f"request of {HEADER_SIZE + length} bytes exceeds this client's max_frame_bytes of "
                f"{self._max_frame_bytes} bytes; split it into smaller requests"
            )
        return length

    def finish(self, opcode: int, decode: Callable[[memoryview], T] = _no_body) -> T:
        """Wait for the reply to the oldest request :meth:`begin` sent and decode it."""
        sock = self._open_socket()  # a connection closed with requests in flight owes nothing
        if not self._awaiting:
            raise RuntimeError("finish() without a request in flight: begin() one first")
        request_id = self._awaiting.popleft()
        with self._translated_errors():
            reply, body = self._receive(sock)
        self._check_reply(reply, body, opcode, request_id)
        return decode(body)

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """Socket failures become a closed connection and a :class:`PSConnectionError` that says why."""
        try:
            yield
        except TimeoutError as error:
            raise self._broken(f"no reply within {self._timeout} s; the server may be overloaded "
                               "or stalled (raise timeout= if requests are very large)") from error
        except PSConnectionError:
            raise
        except OSError as error:
            raise self._broken(f"the connection failed: {error}") from error

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._awaiting.clear()
        self._surplus = b""
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        except OSError as error:
            reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            raise PSConnectionError(
                f"cannot connect to the parameter server at {self.address}: {reason}; check that "
                "it is running (it prints 'listening on HOST:PORT'), that this is the address it "
                "printed, and that no firewall or security group blocks the port"
            ) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            return sock
        try:
            return self._tls.wrap_socket(sock, server_hostname=self._host)
        except (ssl.SSLError, OSError) as error:
            sock.close()
            raise PSConnectionError(
                f"TLS handshake with the parameter server at {self.address} failed: {error}; check "
                "that the server was started with --tls-cert/--tls-key and that the client trusts "
                "its certificate (tls= the CA file that signed it)"
            ) from error

    def _authenticate(self, token: str | None) -> None:
        """Read the server's greeting; answer its nonce if it asks for a token."""
        with self._lock:
            try:
                hello, body = self._receive(self._open_socket())
            except PSConnectionError:
                raise
            except OSError as error:
                raise self._broken(f"no greeting from the server: {error}") from error
            greeting = decode_hello(body) if hello.opcode == Opcode.HELLO else None
            if greeting is None or len(greeting.nonce) not in (0, NONCE_BYTES):
                raise ProtocolError(f"{self.address} did not greet like a cirrus parameter server")
            self.shard, self.shards = greeting.shard, greeting.shards
            nonce = greeting.nonce
        if not nonce:
            return
        if token is None:
            raise PSAuthError(
                f"the parameter server at {self.address} requires a token; pass token= "
                "(the run's token, as written to the server's --token-file)"
            )
        self.request(Opcode.AUTH, [sign(token, nonce)])

    def _open_socket(self) -> socket.socket:
        if self._sock is None:
            raise PSConnectionError(f"the connection to the parameter server at {self.address} is closed")
        return self._sock

    def _send(self, sock: socket.socket, buffers: list[Buffer], total: int) -> None:
        if self._tls is not None:  # an SSL socket has no sendmsg: encrypt one joined record
            sock.sendall(b"".join(buffers))
            return
        sent = sock.sendmsg(buffers)
        if sent == total:
            return
        for buffer in buffers:  # the kernel took part of a large frame: send the rest piecewise
            if sent >= len(buffer):
                sent -= len(buffer)
                continue
            sock.sendall(memoryview(buffer)[sent:])
            sent = 0

    def _receive(self, sock: socket.socket) -> tuple[FrameHeader, memoryview]:
        view = self._view
        received = len(self._surplus)
        if received:
            view[:received] = self._surplus
            self._surplus = b""
        while received < HEADER_SIZE:
            received += self._recv_into(sock, view[received:])
        try:
            header = decode_header(view[:HEADER_SIZE], max_frame_bytes=self._max_frame_bytes,
                                   limit_hint=_CLIENT_LIMIT_HINT)
        except ProtocolError:
            self.close()
            raise
        total = HEADER_SIZE + header.body_length
        if received > total:
            if not self._awaiting:
                raise self._broken("the server sent more bytes than its reply frame holds")
            self._surplus = bytes(view[total:received])  # the start of the next reply
        if total > len(view):
            view = self._larger_view(total, received)
        while received < total:
            received += self._recv_into(sock, view[received:total])
        return header, view[HEADER_SIZE:total]

    def _recv_into(self, sock: socket.socket, view: memoryview) -> int:
        count = sock.recv_into(view)
        if not count:
            raise self._broken(
                "the server closed the connection (it was shut down, restarted, or refused a bad frame)"
            )
        return count

    def _larger_view(self, total: int, received: int) -> memoryview:
        """Grow the reusable buffer for frames up to a limit; beyond it, use a one-off buffer."""
        buffer = bytearray(total)
        buffer[:received] = self._view[:received]
        if total <= _MAX_KEPT_BUFFER_BYTES:
            self._buffer, self._view = buffer, memoryview(buffer)
        return memoryview(buffer)

    def _check_reply(self, reply: FrameHeader, body: memoryview, opcode: int, request_id: int) -> None:
        self.stop_requested = bool(reply.flags & FLAG_STOP)
        if reply.status == Status.AUTH_FAILED:
            self.close()
            raise PSAuthError(f"the parameter server at {self.address} refused the connection: "
                              f"{decode_text(body)}")
        if reply.status != Status.OK:
            raise PSError(decode_text(body))
        if reply.opcode != opcode or reply.request_id != request_id:
            raise self._broken(
                f"reply (opcode {reply.opcode}, id {reply.request_id}) does not answer the request "
                f"(opcode {opcode}, id {request_id})"
            )

    def _broken(self, reason: str) -> PSConnectionError:
        """Close a connection whose stream can no longer be trusted and describe why."""
        self.close()
        return PSConnectionError(f"parameter server at {self.address}: {reason}")
