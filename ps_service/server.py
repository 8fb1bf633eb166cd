"""The asyncio TCP parameter server.

One event loop serves every connection, so each request is applied atomically with
respect to all others without locks: concurrent pushes from many workers can never
interleave inside one update. The numpy work per request is small (a minibatch's
keys), which keeps the loop responsive.

A maintenance task runs beside the connections once a second (faster when checkpoints
are frequent): it samples the update rate for the status call, closes connections that
have been idle too long, and writes a checkpoint when one is due. A server restored
from a checkpoint resumes the tables, their optimizer state and step counts exactly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ps_service import checkpoint

from ps_service.addresses import format_address
from ps_service.errors import ProtocolError, PSError, PSStartupError
from ps_service.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    VERSION,
    Buffer,
    Opcode,
    Status,
    TableRequest,
    decode_json,
    decode_table_request,
    encode_array,
    encode_json,
    encode_text,
)
from ps_service.server_connection import ConnectionSettings, ServerConnection, Session, Traffic
from ps_service.store import TableStore
from ps_service.workers import ACTIVE, Registration, WorkerRegistry

log = logging.getLogger(__name__)

_CLOSE_GRACE_S = 1.0
_RATE_WINDOW_S = 10.0


@dataclass
class _CheckpointState:
    uri: str | None
    interval_s: float
    written: int = 0
    last_at: float | None = None
    last_updates: int | None = None
    last_error: str | None = None
    changes_saved: int = 0


Handler = Callable[[Buffer, Session], tuple[list[Buffer], str | None]]


class ParameterServer:
    """Serves named tables over TCP until a shutdown request, a signal or :meth:`stop_thread`.

    ``shard``/``shards`` name this process's place in a sharded group (tables created
    for another place are refused); ``tls`` is a server ``ssl.SSLContext``;
    ``checkpoint_uri`` (``file://``, a path or ``s3://``) receives a checkpoint every
    ``checkpoint_interval_s`` while tables change and one at graceful shutdown;
    ``restore_uri`` names a checkpoint to resume before listening.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_reports: int = 1000,
        handshake_timeout_s: float = 10.0,
        idle_timeout_s: float = 600.0,
        heartbeat_timeout_s: float = 30.0,
        shard: int = 0,
        shards: int = 1,
        tls: ssl.SSLContext | None = None,
        checkpoint_uri: str | None = None,
        checkpoint_interval_s: float = 60.0,
        restore_uri: str | None = None,
    ) -> None:
        if token is not None and not token:
            raise ValueError("token must be a non-empty string, or None to disable authentication")
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in 0..shards-1 (shards={shards}), got {shard}")
        for name, value in (("idle_timeout_s", idle_timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s),
                            ("checkpoint_interval_s", checkpoint_interval_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self._host = host
        self._port = port
        self._token = token
        self._tls = tls
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._store = TableStore(max_reports=max_reports, shard=shard, shards=shards)
        self._registry = WorkerRegistry(heartbeat_timeout_s=heartbeat_timeout_s)
        self._checkpoints = _CheckpointState(checkpoint_uri, checkpoint_interval_s)
        self._restore_uri = restore_uri
        self._changes = 0
        self._writing: asyncio.Future[str] | None = None
        self._rate_samples: deque[tuple[float, int]] = deque()
        self.traffic = Traffic()
        self._clients = 0
        self._started_at = 0.0
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._connections: set[ServerConnection] = set()
        self._thread: threading.Thread | None = None
        self._handlers: dict[int, Handler] = {
            Opcode.CREATE_TABLE: self._create_table,
            Opcode.PULL: self._pull,
            Opcode.PUSH: self._push,
            Opcode.PUSH_PULL: self._push_pull,
            Opcode.GET_TABLE: self._get_table,
            Opcode.SET_TABLE: self._set_table,
            Opcode.DROP_TABLE: self._drop_table,
            Opcode.REPORT: self._report,
            Opcode.STATUS: self._status,
            Opcode.STOP: self._stop,
            Opcode.SHUTDOWN: self._request_stop_all,
            Opcode.REGISTER: self._register,
            Opcode.HEARTBEAT: self._heartbeat,
            Opcode.DEREGISTER: self._deregister,
        }

    @property
    def address(self) -> str:
        """``host:port`` actually bound (port 0 picks a free one); known once listening."""
        if self._address is None:
            raise RuntimeError("the parameter server is not listening yet")
        return self._address

    async def serve(self, on_listening: Callable[[str], None] | None = None) -> None:
        """Listen, call ``on_listening(address)`` once connections are accepted, serve until shutdown."""
        if self._loop is not None:
            raise RuntimeError("this parameter server is already serving")
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        try:
            if self._restore_uri is not None:
                await self._restore(self._restore_uri)
            settings = ConnectionSettings(
                token=self._token, max_frame_bytes=self._max_frame_bytes,
                handshake_timeout_s=self._handshake_timeout_s, shard=self._store.shard, shards=self._store.shards,
            )
            listener = await self._loop.create_server(
                lambda: ServerConnection(self, settings), self._host, self._port, ssl=self._tls
            )
        except checkpoint.CheckpointError as error:
            self._loop = None
            raise PSStartupError(str(error)) from error
        except OSError as error:
            self._loop = None
            raise PSStartupError(
                f"cannot listen on {format_address(self._host, self._port)}: {error.strerror or error}; "
                "choose another host or port (port 0 picks a free one)"
            ) from error
        host, port = listener.sockets[0].getsockname()[:2]
        self._address = format_address(host, port)
        self._started_at = time.time()
        log.info("parameter server listening on %s (shard %d of %d, authentication %s, TLS %s)",
                 self._address, self._store.shard, self._store.shards,
                 "on" if self._token else "off", "on" if self._tls else "off")
        if on_listening is not None:
            on_listening(self._address)
        maintenance = asyncio.create_task(self._maintain())
        try:
            await self._shutdown.wait()
        finally:
            maintenance.cancel()
            await asyncio.gather(maintenance, return_exceptions=True)
            await self._close(listener)
            if self._checkpoints.uri is not None:
                await self._checkpoint()
        self._loop = None
        log.info("parameter server on %s stopped", self._address)

    def request_shutdown(self) -> None:
        """Ask a serving server to stop; safe from any thread and from signal handlers."""
        loop, shutdown = self._loop, self._shutdown
        if loop is None or shutdown is None:
            return
        try:
            loop.call_soon_threadsafe(shutdown.set)
        except RuntimeError:
            log.debug("shutdown requested after the event loop closed; nothing left to stop")

    def start_in_thread(self, *, startup_timeout_s: float = 10.0) -> str:
        """Serve from a daemon thread (tests, notebooks) and return the address once listening."""
        if self._thread is not None:
            raise RuntimeError("this parameter server already runs in a thread")
        listening = threading.Event()
        failures: list[Exception] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(on_listening=lambda _address: listening.set()))
            except Exception as error:
                if listening.is_set():
                    log.exception("parameter server thread failed while serving")
                failures.append(error)
            finally:
                listening.set()

        self._thread = threading.Thread(target=run, name="ps-server", daemon=True)
        self._thread.start()
        if not listening.wait(startup_timeout_s):
            raise PSStartupError(f"parameter server thread did not listen within {startup_timeout_s} s")
        if failures:
            self._thread = None
            raise PSStartupError(str(failures[0])) from failures[0]
        return self.address

    def stop_thread(self, *, timeout_s: float = 10.0) -> None:
        if self._thread is None:
            return
        self.request_shutdown()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"parameter server thread did not stop within {timeout_s} s")
        self._thread = None

    def __enter__(self) -> ParameterServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_thread()

    async def _close(self, listener: asyncio.Server) -> None:
        """Close every connection; abort those still flushing replies after a short grace period.

        A graceful close ends each connection once its transport has sent what it holds, but
        a client that stopped reading never lets that happen: its transport is aborted, so a
        stalled peer cannot keep the server from stopping.
        """
        listener.close()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            closing = {connection.closed: connection for connection in connections}
            _finished, stalled = await asyncio.wait(closing, timeout=_CLOSE_GRACE_S)
            for future in stalled:
                log.warning("aborting connection from %s: it stopped reading replies", closing[future].session.peer)
                closing[future].abort()
            await asyncio.gather(*stalled, return_exceptions=True)
        await listener.wait_closed()

    # What the connections call (ConnectionHost).

    def connected(self, connection: ServerConnection) -> None:
        self._connections.add(connection)

    def admitted(self, connection: ServerConnection) -> None:
        self._clients += 1

    def closed(self, connection: ServerConnection, admitted: bool) -> None:
        self._connections.discard(connection)
        if admitted:
            self._clients -= 1
        if connection.session.registration is not None:
            self._registry.disconnected(connection.session.registration)

    def stop_requested(self, table: str | None) -> bool:
        return self._store.stop_requested(table)

    def shutdown_requested(self) -> None:
        assert self._shutdown is not None
        self._shutdown.set()

    def dispatch(self, opcode: int, body: Buffer, session: Session) -> tuple[Status, list[Buffer], str | None]:
        """Run one request; every failure becomes an error reply and the connection stays usable."""
        handler = self._handlers.get(opcode)
        try:
            if handler is None:
                raise ProtocolError(f"unknown opcode {opcode}; the client is newer than this server")
            parts, table = handler(body, session)
            return Status.OK, parts, table
        except ProtocolError as error:
            self.traffic.errors += 1
            self.traffic.bad_frames += 1
            return Status.ERROR, [encode_text(str(error))], None
        except PSError as error:
            self.traffic.errors += 1
            return Status.ERROR, [encode_text(str(error))], None
        except Exception as error:
            self.traffic.errors += 1
            log.exception("internal error handling opcode %s", opcode)
            return Status.ERROR, [encode_text(f"internal server error: {error!r}")], None

    @staticmethod
    def _table_request(body: Buffer, operation: str, *required: str) -> TableRequest:
        request = decode_table_request(body)
        for name in required:
            if getattr(request, name) is None:
                raise PSError(f"{operation} on table {request.table!r} carries no {name.replace('_', ' ')}")
        return request

    def _pull(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "pull", "keys")
        values = self._store.table(request.table).pull(request.keys)
        self.traffic.keys_out += len(values)
        return encode_array(values), request.table

    def _push(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "push", "keys", "values")
        if session.registration is not None:
            session.registration.check_current()
        self._store.table(request.table).push(request.keys, request.values)
        self._changes += 1
        self.traffic.keys_in += len(request.keys)
        return [], request.table

    def _push_pull(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "push_pull", "keys", "values", "next_keys")
        if session.registration is not None:
            session.registration.check_current()
        table = self._store.table(request.table)
        values = table.push_pull(request.keys, request.values, request.next_keys)
        self._changes += 1
        self.traffic.keys_in += len(request.keys)
        self.traffic.keys_out += len(values)
        return encode_array(values), request.table

    def _get_table(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "get_table")
        values = self._store.table(request.table).get()
        self.traffic.keys_out += len(values)
        return encode_array(values), request.table

    def _drop_table(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "drop_table")
        self._store.drop(request.table)
        self._registry.forget_run(request.table)  # a run's workers register under its table's name
        self._changes += 1
        log.info("dropped table %r", request.table)
        return [], None

    def _set_table(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = self._table_request(body, "set_table", "values")
        self._store.table(request.table).set(request.values)
        self._changes += 1
        return [], request.table

    def _create_table(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        table, created = self._store.create(decode_json(body))
        if created:
            self._changes += 1
            log.info("created table %r: %s", table.spec.name, table.spec.to_json())
        return [encode_json({"created": created, "spec": table.spec.to_json()})], table.spec.name

    def _report(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        request = decode_json(body)
        name = request.get("table")
        if not isinstance(name, str):
            raise PSError(f"report: table must be a table name, got {name!r}")
        table = self._store.table(name)
        table.report(worker=request.get("worker"), name=request.get("name"),
                     value=request.get("value"), count=request.get("count", 1))
        self._changes += 1  # reports are part of a checkpoint
        return [], table.spec.name

    def _register(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        if session.registration is not None and session.registration.state == ACTIVE:
            raise PSError(
                f"this connection already holds worker {session.registration.worker!r} of run "
                f"{session.registration.run!r}; open a new connection for another worker"
            )
        registration = self._registry.register(decode_json(body), session.peer)
        session.registration = registration
        log.info("registered worker %r generation %d of run %r from %s", registration.worker,
                 registration.generation, registration.run, session.peer)
        return [encode_json({"run": registration.run, "worker": registration.worker,
                             "generation": registration.generation})], None

    def _heartbeat(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        self._registry.heartbeat(self._registration(session, "heartbeat"))
        return [], None

    def _deregister(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        registration = self._registration(session, "deregister")
        self._registry.deregister(registration, decode_json(body).get("reason", "finished"))
        self._changes += 1  # finished slots are part of a checkpoint
        log.info("worker %r generation %d of run %r deregistered: %s", registration.worker,
                 registration.generation, registration.run, registration.state)
        return [], None

    @staticmethod
    def _registration(session: Session, operation: str) -> Registration:
        if session.registration is None:
            raise PSError(f"{operation}: this connection has not registered a worker; call register first")
        return session.registration

    def _status(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        since = decode_json(body).get("reports_since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))
                                  or not math.isfinite(since)):
            raise PSError(f"status: reports_since must be a time in seconds or null, got {since!r}")
        return [encode_json(self._status_document(since))], None

    def _stop(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        name = decode_json(body).get("table")
        if name is not None and not isinstance(name, str):
            raise PSError(f"stop: table must be a table name or null, got {name!r}")
        self._store.stop(name)
        log.info("stop requested for %s", f"table {name!r}" if name else "all tables")
        return [], name

    def _request_stop_all(self, body: Buffer, session: Session) -> tuple[list[Buffer], str | None]:
        """Shutdown: flag every worker to stop; the connection loop then ends the server."""
        self._store.stop_all = True
        log.info("shutdown requested")
        return [], None

    def _status_document(self, reports_since: float | None = None) -> dict[str, Any]:
        now = time.time()
        checkpoints = self._checkpoints
        return {
            "protocol_version": VERSION,
            "address": self._address,
            "shard": self._store.shard,
            "shards": self._store.shards,
            "tls": self._tls is not None,
            "started_at": self._started_at,
            "uptime_s": now - self._started_at,
            "stop": self._store.stop_all,
            "clients": self._clients,
            "updates": self._store.total_updates(),
            "updates_per_s": self._update_rate(),
            **asdict(self.traffic),
            "registered_workers": self._registry.active_count(),
            "workers": self._registry.status(),
            "checkpoint": {
                "uri": checkpoints.uri, "interval_s": checkpoints.interval_s, "written": checkpoints.written,
                "last_at": checkpoints.last_at, "last_updates": checkpoints.last_updates,
                "last_error": checkpoints.last_error,
            },
            "tables": self._store.status(reports_since),
        }

    async def _maintain(self) -> None:
        """Sample the update rate, close idle connections, checkpoint when due; never raises."""
        checkpoints = self._checkpoints
        tick = min(1.0, checkpoints.interval_s / 4) if checkpoints.uri else 1.0
        next_checkpoint = time.monotonic() + checkpoints.interval_s
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self._rate_samples.append((now, self._store.total_updates()))
            while now - self._rate_samples[0][0] > _RATE_WINDOW_S:
                self._rate_samples.popleft()
            self._close_idle(now)
            if checkpoints.uri is not None and now >= next_checkpoint:
                await self._checkpoint()
                next_checkpoint = time.monotonic() + checkpoints.interval_s

    def _update_rate(self) -> float:
        if len(self._rate_samples) < 2:
            return 0.0
        (first_t, first_u), (last_t, last_u) = self._rate_samples[0], self._rate_samples[-1]
        return round((last_u - first_u) / (last_t - first_t), 1)

    def _close_idle(self, now: float) -> None:
        for connection in list(self._connections):
            session = connection.session
            # Silent, or stuck: a client that stops reading its replies pauses its connection
            # and would otherwise hold the replies buffered for it until shutdown.
            if now - session.last_activity > self._idle_timeout_s:
                log.info("closing connection from %s: no request completed for %s s", session.peer,
                         self._idle_timeout_s)
                connection.abort()

    async def _checkpoint(self) -> None:
        """Snapshot on the loop (consistent), write in a thread; a failure is logged and shown in status."""
        checkpoints = self._checkpoints
        assert checkpoints.uri is not None
        if self._writing is not None:
            # a periodic write cancelled by shutdown still runs in its thread: let it land
            # before the final one, or its older snapshot would replace the newer
            await asyncio.gather(self._writing, return_exceptions=True)
        if self._changes == checkpoints.changes_saved:
            return  # nothing new: never overwrite a checkpoint with the same (or an empty) state
        changes = self._changes
        snapshot = self._store.snapshot(self._registry.finished_slots())
        self._writing = asyncio.ensure_future(asyncio.to_thread(checkpoint.write, snapshot, checkpoints.uri))
        try:
            await asyncio.shield(self._writing)
        except Exception as error:
            checkpoints.last_error = str(error)
            log.error("checkpoint to %s failed: %s; the server keeps serving and retries", checkpoints.uri, error)
            return
        checkpoints.written += 1
        checkpoints.changes_saved = changes
        checkpoints.last_at = snapshot.taken_at
        checkpoints.last_updates = snapshot.updates
        checkpoints.last_error = None

    async def _restore(self, uri: str) -> None:
        snapshot = await asyncio.to_thread(checkpoint.read, uri, self._store.shard, self._store.shards)
        try:
            self._store.restore(snapshot)
        except (PSError, KeyError, TypeError, ValueError) as error:
            raise checkpoint.CheckpointError(f"checkpoint under {uri} holds a table this server cannot "
                                             f"rebuild: {error}") from error
        self._registry.restore(snapshot.finished_slots)
        self._changes = self._checkpoints.changes_saved = 1
        log.info("restored %d tables (%d updates) from %s, taken at %s", len(snapshot.tables),
                 snapshot.updates, uri, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.taken_at)))

