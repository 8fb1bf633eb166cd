"""The Lambda Invoke REST API, on top of the local runtime, close enough to AWS for an unmodified boto3 client.

Only ``POST /2015-03-31/functions/{name}/invocations`` is served. Errors are answered as
AWS does (a JSON body with ``message`` and ``Type``, and the ``x-amzn-ErrorType`` header), so
botocore raises its modelled exceptions (``TooManyRequestsException``,
``ResourceNotFoundException``, ...). Each response closes its connection (HTTP/1.0), so no
thread sits on an idle keep-alive connection when the runtime stops.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cirrus_airflow.executor.function_config import SYNC_PAYLOAD_LIMIT

if TYPE_CHECKING:
    from cirrus_airflow.executor.local_runtime import LocalLambdaRuntime

logger = logging.getLogger(__name__)

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations/?$")
_BYTE_COUNT = re.compile(r"\s*[0-9]+\s*")
_LOG_TAIL_BYTES = 4096
_READ_CHUNK = 64 * 1024


class LambdaApiError(Exception):
    """An error the Invoke API answers with an HTTP status and an AWS error type."""

    def __init__(self, status: int, error_type: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.reason = reason


class InvokeApiServer(ThreadingHTTPServer):
    """A threading HTTP server that can wake the threads of connections that never sent a request."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], runtime: LocalLambdaRuntime) -> None:
        self.runtime = runtime
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _InvokeHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Stop reading on every open connection, so ``server_close()`` does not wait on idle clients."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("error while serving %s", client_address, exc_info=True)


class _InvokeHandler(BaseHTTPRequestHandler):
    server: InvokeApiServer
    timeout = 60

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        match = _INVOKE_PATH.match(url.path)
        if match is None:
            self._unknown_operation()
            return
        try:
            payload = self._read_body()
            result = self.server.runtime.invoke(
                unquote(match["name"]),
                payload,
                qualifier=parse_qs(url.query).get("Qualifier", [None])[0],
                invocation_type=self.headers.get("X-Amz-Invocation-Type", "RequestResponse"),
            )
        except LambdaApiError as error:
            self._send_error(error)
            return
        except Exception as error:  # answer like AWS's 500 instead of dropping the connection
            logger.exception("the local Lambda runtime failed to serve %s", self.path)
            self._send_error(LambdaApiError(500, "ServiceException", f"the local Lambda runtime failed: {error}"))
            return
        headers = {"x-amzn-RequestId": result.request_id}
        if result.status == 200:
            headers["X-Amz-Executed-Version"] = "$LATEST"
            if result.function_error:
                headers["X-Amz-Function-Error"] = result.function_error
            if self.headers.get("X-Amz-Log-Type") == "Tail":
                tail = result.log.encode("utf-8")[-_LOG_TAIL_BYTES:]
                headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode("ascii")
        self._send(result.status, result.payload, headers)

    def _unknown_operation(self) -> None:
        self._send_error(LambdaApiError(
            404, "UnknownOperationException",
            "the local Lambda runtime only serves Invoke (POST /2015-03-31/functions/{name}/invocations)",
        ))

    do_GET = do_PUT = do_DELETE = do_PATCH = _unknown_operation

    def _read_body(self) -> bytes:
        """The request body; one that exceeds every Lambda limit is drained, not kept, and refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise LambdaApiError(400, "InvalidRequestContentException",
                                 "the local Lambda runtime needs a Content-Length; pass the payload as bytes")
        remaining = _content_length(self.headers.get("Content-Length"))
        if remaining <= SYNC_PAYLOAD_LIMIT:
            return self.rfile.read(remaining)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, _READ_CHUNK))
            if not chunk:
                break
            remaining -= len(chunk)
        raise LambdaApiError(413, "RequestTooLargeException",
                             f"Request must be smaller than {SYNC_PAYLOAD_LIMIT} bytes for the Invoke operation")

    def _send_error(self, error: LambdaApiError) -> None:
        body: dict[str, str] = {"Type": "User" if error.status < 500 else "Service", "message": error.message}
        if error.reason:
            body["Reason"] = error.reason
        headers = {"x-amzn-ErrorType": error.error_type, "x-amzn-RequestId": str(uuid.uuid4())}
        self._send(error.status, json.dumps(body).encode("utf-8"), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        logger.debug("%s - %s", self.address_string(), format % args)


def _content_length(header: str | None) -> int:
    """The declared body size (none declared: an empty body).

    Anything but a byte count is refused at once: ``read(-1)`` would wait for the client to
    close the connection, which a client waiting for its answer never does.
    """
    if header is None:
        return 0
    if not _BYTE_COUNT.fullmatch(header):
        raise LambdaApiError(400, "InvalidRequestContentException",
                             f"Content-Length must be a byte count, got {header!r}")
    return int(header)
