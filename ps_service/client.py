"""The client workers, evaluators and the training driver use to reach the parameter server.

Keys are integer arrays: int32 (or narrower) arrays travel as int32, anything wider as
int64, so shard indices (int32) cost four bytes a key on the wire. Values are float32
of shape (len(keys), width); a 1-D array is taken as width 1.

The same client talks to one server or to a sharded group (``"h:p1,h:p2"``, see
:mod:`ps_service.sharding`): each request is cut by shard, every shard is sent its part
before any reply is awaited, so the shards work on it at the same time, and the replies
are put back in the caller's key order. Pushes reach every shard, even one that owns
none of the keys, so all shards count the same updates and learning-rate schedules and
Adam's bias correction stay identical to a single server's.

``start_pull`` and ``start_push_pull`` send a request and return at once (ps-lite's
asynchronous push and pull): the caller computes while the request travels and the
server works, then ``wait()``s for the weights. No thread is involved, so the caller's
arithmetic does not share the interpreter with a request thread.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ps_service.connection import Connection
from ps_service.errors import PSConnectionError, PSError
from ps_service.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Buffer,
    Opcode,
    decode_array,
    decode_json,
    encode_json,
    encode_table_request,
)
from ps_service.sharding import Split, group_addresses, split_keys
from ps_service.validation import check_keys, check_values, check_width

T = TypeVar("T")
# Requests one thread may have sent before reading the first reply: a worker sends its next
# push/pull before it reads the reply to the last, so a late reply costs it less.
MAX_IN_FLIGHT = 2
# The reply owed when a request is sent behind another should be at most this large. The
# client does not read while it sends, and a server whose replies back up stops reading its
# requests, so a larger reply could stall both until the timeout; this much fits Linux's
# default socket receive buffer (tcp_rmem, 128 kB) with room to spare.
SEND_BEHIND_MAX_REPLY_BYTES = 64 * 1024
_TRAFFIC_FIELDS = ("requests", "errors", "bad_frames", "auth_failures", "bytes_in", "bytes_out",
                   "keys_in", "keys_out", "clients")


def _no_reply(body: memoryview) -> None:
    return None


def _only(parts: list[T]) -> T:
    return parts[0]


class PendingReply(Generic[T]):
    """A request that was sent and whose reply (an array of rows) has not been read yet.

    Until :meth:`wait`, the client's connections belong to the thread that sent it. That
    thread may send one more ``start_pull``/``start_push_pull`` behind it (``MAX_IN_FLIGHT``
    in all; each server answers in order, so the later request sees the earlier one's
    push, and the replies are read in the order they were asked for), when the reply it
    owes is small (``SEND_BEHIND_MAX_REPLY_BYTES``); a blocking request
    from it is refused (it would wait for itself); one from another thread waits, and a
    heartbeat is skipped. Call :meth:`wait` soon, and before anything that may block for
    long (a read from storage): the server sees the worker alive only when a frame arrives.
    """

    def __init__(self, client: PSClient, opcode: int, connections: list[Connection],
                 combine: Callable[[list[np.ndarray]], T]) -> None:
        self._client, self.opcode, self.connections, self._combine = client, opcode, connections, combine
        self.owner = threading.get_ident()
        self.lost: PSConnectionError | None = None  # set when a failed send behind it broke its streams
        self._collected = False
        self._once = threading.Lock()

    def wait(self) -> T:
        """The reply (the pulled weights); raises the server's refusal like the blocking call would."""
        with self._once:
            if self._collected:
                raise RuntimeError("this reply was already collected; wait() returns it once")
            last = self._client._take(self)
            self._collected = True
        return self._combine(_collect(self.opcode, self.connections, decode_array, release=last))


class PSClient:
    """One connection to each server of a group; every reply updates :attr:`stop_requested`.

    Raises :class:`~ps_service.errors.PSError` with the server's message when a request
    is refused, :class:`~ps_service.errors.PSAuthError` when the token is missing or
    wrong, and :class:`~ps_service.errors.PSConnectionError` when the server cannot be
    reached or the connection breaks. ``tls`` is an ``ssl.SSLContext``, the path of a
    CA file that signed the server's certificate, or True for the system's CAs.

    Connecting to only some members of a group, or listing them out of order, is refused:
    such a client would read and write other keys' rows. ``member=True`` opts out, for
    an operator inspecting one member on its own (its tables are its local rows).
    """

    def __init__(
        self,
        address: str | tuple[str, int] | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        tls: ssl.SSLContext | str | bool | None = None,
        member: bool = False,
    ) -> None:
        context = tls_context(tls)
        self._connections: list[Connection] = []
        try:
            for shard_address in group_addresses(address):
                self._connections.append(Connection(
                    shard_address, token, timeout=timeout, max_frame_bytes=max_frame_bytes, tls=context
                ))
            self._shards = len(self._connections)
            self._in_flight: tuple[PendingReply[Any], ...] = ()  # oldest first, all of one thread
            if not member:
                self._check_group()
        except BaseException:
            self.close()
            raise
        self._shapes: dict[str, tuple[int, int]] = {}

    def _check_group(self) -> None:
        """Each server must sit where the address list puts it: a client missing a member, or
        listing them out of order, would otherwise read and write other keys' rows."""
        for position, connection in enumerate(self._connections):
            if (connection.shard, connection.shards) != (position, self._shards):
                raise PSConnectionError(
                    f"the parameter server at {connection.address} is shard {connection.shard} of "
                    f"{connection.shards}, but it is listed at position {position} of {self._shards} "
                    "addresses; connect with every address of the group, in the order it printed them"
                )

    @property
    def address(self) -> str:
        return ",".join(connection.address for connection in self._connections)

    @property
    def shards(self) -> int:
        return self._shards

    @property
    def stop_requested(self) -> bool:
        """True once a reply carried the stop bit: the server or this request's table was stopped."""
        return any(connection.stop_requested for connection in self._connections)

    def create_table(
        self,
        name: str,
        size: int,
        width: int = 1,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        **options: Any,
    ) -> dict[str, Any]:
        """Create ``name`` or confirm an identical one exists; returns ``{"created", "spec"}``.

        ``optimizer`` is ``sgd``, ``adagrad``, ``momentum``, ``nesterov`` or ``adam``. ``options``
        are the optimizer's and its schedule's (see :mod:`ps_service.optimizers`): for all,
        ``l2``, ``schedule="constant"|"inverse_sqrt"|"step"``, ``decay_steps``, ``decay_rate``;
        adagrad ``initial_accumulator``, ``eps``; momentum and nesterov ``momentum``; adam
        ``beta1``, ``beta2``, ``eps``. The initialiser's options are ``initializer="zeros"|"normal"``,
        ``init_scale`` and ``seed``.
        """
        request = {"name": name, "size": size, "width": width, "optimizer": optimizer,
                   "learning_rate": learning_rate, **options}
        parts = [[encode_json({**request, "shard": shard, "shards": self._shards})]
                 for shard in range(self._shards)]
        reply = self._scatter(Opcode.CREATE_TABLE, parts, decode_json)[0]
        self._shapes[name] = (int(reply["spec"]["size"]), int(reply["spec"]["width"]))
        return reply

    def pull(self, name: str, keys: Any) -> np.ndarray:
        """The current weights of ``keys``, shape (len(keys), width), float32."""
        self._refuse_reentry()
        return self.start_pull(name, keys).wait()

    def start_pull(self, name: str, keys: Any) -> PendingReply[np.ndarray]:
        """:meth:`pull` without waiting: ``wait()`` returns the weights."""
        key_array = as_keys(keys)
        if self._shards == 1:
            return self._start(Opcode.PULL, [encode_table_request(name, keys=key_array)], _only)
        if not self._mine():
            self._table_shape(name)  # known now, while nothing is in flight: a push/pull behind needs it
        split = split_keys(key_array, self._shards)
        parts = [encode_table_request(name, keys=local) for local in split.local_keys]
        return self._start(Opcode.PULL, parts, lambda replies: self._gathered(split, replies))

    def push(self, name: str, keys: Any, grads: Any) -> None:
        """Send gradients; rows of repeated keys are summed before the optimizer step."""
        key_array = as_keys(keys)
        values = as_values(name, grads, len(key_array))
        if self._shards == 1:
            self._one(Opcode.PUSH, encode_table_request(name, keys=key_array, values=values))
            return
        self._check_group_push(name, key_array, values)
        split = split_keys(key_array, self._shards)
        parts = [encode_table_request(name, keys=local, values=rows)
                 for local, rows in zip(split.local_keys, split.rows(values))]
        self._scatter(Opcode.PUSH, parts)

    def push_pull(self, name: str, keys: Any, grads: Any, next_keys: Any) -> np.ndarray:
        """Push this minibatch's gradients and pull the next one's weights in one round trip."""
        self._refuse_reentry()
        return self.start_push_pull(name, keys, grads, next_keys).wait()

    def start_push_pull(self, name: str, keys: Any, grads: Any, next_keys: Any) -> PendingReply[np.ndarray]:
        """:meth:`push_pull` without waiting: a worker sends its gradient and the next
        minibatch's keys, computes, and then ``wait()``s for those weights."""
        key_array, next_array = same_key_dtype(as_keys(keys), as_keys(next_keys))
        values = as_values(name, grads, len(key_array))
        if self._shards == 1:
            request = encode_table_request(name, keys=key_array, values=values, next_keys=next_array)
            return self._start(Opcode.PUSH_PULL, [request], _only)
        self._check_group_push(name, key_array, values, next_array)
        pushed, pulled = split_keys(key_array, self._shards), split_keys(next_array, self._shards)
        requests = [encode_table_request(name, keys=local, values=rows, next_keys=wanted)
                    for local, rows, wanted in zip(pushed.local_keys, pushed.rows(values), pulled.local_keys)]
        return self._start(Opcode.PUSH_PULL, requests, lambda replies: self._gathered(pulled, replies))

    def get_table(self, name: str) -> np.ndarray:
        """Every row of the table, shape (size, width): for evaluation and export."""
        parts = self._scatter(Opcode.GET_TABLE, [encode_table_request(name)] * self._shards, decode_array)
        if self._shards == 1:
            return parts[0]
        table = np.empty((sum(len(part) for part in parts), parts[0].shape[1]), dtype=np.float32)
        for shard, part in enumerate(parts):
            table[shard::self._shards] = part
        return table

    def set_table(self, name: str, values: Any) -> None:
        """Overwrite every row (warm start); ``values`` must have the table's shape."""
        array = as_values(name, np.asarray(values, dtype=np.float32), len(values))
        if self._shards > 1:
            self._check_group_set(name, array)
        parts = [encode_table_request(name, values=np.ascontiguousarray(array[shard::self._shards]))
                 for shard in range(self._shards)]
        self._scatter(Opcode.SET_TABLE, parts)

    def drop_table(self, name: str) -> None:
        """Delete the table on every shard, once its weights are saved: a long-lived server
        shared by many runs would otherwise keep every run's table."""
        self._scatter(Opcode.DROP_TABLE, [encode_table_request(name)] * self._shards)
        self._shapes.pop(name, None)

    def report(self, name: str, metric: str, value: float, count: int = 1, worker: str | int | None = None) -> None:
        """Record a metric (e.g. ``train_loss`` averaged over ``count`` examples) for table ``name``.

        Reports go to the first shard only: they are a time series, not model state.
        """
        request = {"table": name, "name": metric, "value": float(value), "count": int(count), "worker": worker}
        self._one(Opcode.REPORT, [encode_json(request)])

    def register(self, run: str, worker: str | int, generation: int = 0) -> dict[str, Any]:
        """Claim ``worker``'s slot in ``run`` for this connection before doing any work.

        Refused (:class:`~ps_service.errors.PSError`) when the same generation is still
        alive or has finished, or a newer one holds the slot: a retried or duplicated
        Lambda invocation then exits instead of training twice. A worker that hands
        over to a fresh invocation passes ``generation + 1`` to its successor.
        """
        request = [encode_json({"run": run, "worker": worker, "generation": generation})]
        # The first shard decides alone: were all asked at once, two copies of one invocation
        # could each win on some shards, both be refused, and the slot go unworked.
        admitted = self._one(Opcode.REGISTER, request, decode_json)
        if self._shards > 1:
            self._scatter(Opcode.REGISTER, [request] * self._shards, decode_json, first=1)
        return admitted

    def heartbeat(self) -> None:
        """Tell the server this worker is alive while it does no requests (e.g. loading a shard).

        Skipped on a connection that is busy with a request in flight: waiting for it would
        stall the heartbeat behind the worker's pipelined requests, whose replies come within
        milliseconds (and a worker waits for its reply before it waits on storage).
        """
        self._refuse_reentry()
        idle = [connection for connection in self._connections if connection.lock.acquire(blocking=False)]
        _collect(Opcode.HEARTBEAT, _begin(Opcode.HEARTBEAT, idle, [[]] * len(idle)), _no_reply)

    def deregister(self, reason: str = "finished") -> None:
        """Release the slot: ``finished`` marks the generation's work done, so a retry is refused;
        ``handover`` leaves the slot to the next generation."""
        request = [encode_json({"reason": reason})]
        self._scatter(Opcode.DEREGISTER, [request] * self._shards)

    def status(self, *, reports_since: float | None = None) -> dict[str, Any]:
        """Counters, tables, registered workers and reports; a group's traffic is summed.

        ``reports_since`` (a time in the server's clock, as reports carry it in ``"t"``)
        leaves out older reports: a driver polling for new ones should pass the newest
        it has seen, or each poll carries every report kept (up to ``max_reports`` a
        table, every table of the server) and holds up the workers while it is built.
        """
        request = [] if reports_since is None else [encode_json({"reports_since": reports_since})]
        documents = self._scatter(Opcode.STATUS, [request] * self._shards, decode_json)
        if self._shards == 1:
            return documents[0]
        merged = {**documents[0], "address": self.address, "shards": documents}
        for field in _TRAFFIC_FIELDS:
            merged[field] = sum(document.get(field, 0) for document in documents)
        merged["stop"] = any(document["stop"] for document in documents)
        return merged

    def stop(self, table: str | None = None) -> None:
        """Set the stop flag of one table, or of the whole server when ``table`` is None."""
        self._scatter(Opcode.STOP, [[encode_json({"table": table})]] * self._shards)

    def shutdown(self) -> None:
        """Stop every worker and end the server processes; this client is closed afterwards."""
        try:
            self._scatter(Opcode.SHUTDOWN, [[]] * self._shards)
        finally:
            self.close()

    def close(self) -> None:
        for connection in self._connections:
            connection.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _one(self, opcode: int, parts: list[Buffer], decode: Callable[[memoryview], T] = _no_reply) -> T:
        self._refuse_reentry()
        return self._connections[0].request(opcode, parts, decode)

    def _scatter(self, opcode: int, requests: Sequence[Sequence[Buffer]],
                 decode: Callable[[memoryview], T] = _no_reply, *, first: int = 0) -> list[T]:
        """Send every shard its request, then collect every reply (see :func:`_collect`)."""
        self._refuse_reentry()
        if self._shards == 1:
            return [self._connections[0].request(opcode, requests[0], decode)]
        connections = self._connections[first:]
        return _collect(opcode, _begin(opcode, connections, requests[first:], lock=True), decode)

    def _start(self, opcode: int, requests: Sequence[Sequence[Buffer]],
               combine: Callable[[list[np.ndarray]], T]) -> PendingReply[T]:
        """Send every shard its request and return without reading the replies: on free
        connections, or behind this thread's requests in flight, on the connections they hold."""
        mine = self._mine()
        if len(mine) >= MAX_IN_FLIGHT:
            raise RuntimeError(f"this client has {len(mine)} requests in flight: wait() for the oldest reply "
                               "before sending another")
        if mine:
            pending = PendingReply(self, opcode, self._send_behind(opcode, requests), combine)
            self._in_flight = (*mine, pending)
        else:
            pending = PendingReply(self, opcode, _begin(opcode, self._connections, requests, lock=True), combine)
            self._in_flight = (pending,)
        return pending

    def _send_behind(self, opcode: int, requests: Sequence[Sequence[Buffer]]) -> list[Connection]:
        for connection, parts in zip(self._connections, requests):
            connection.check_length(parts)  # refused before anything is sent: nothing changes
        try:
            for connection, parts in zip(self._connections, requests):
                connection.begin(opcode, parts)
        except BaseException as error:
            self._abandon(error)
            raise
        return self._connections

    def _abandon(self, error: BaseException) -> None:
        """A send behind requests in flight failed, so a stream may hold part of a frame and
        no reply can be matched to its request any more: close every connection, mark the
        requests in flight lost, and free the connections they held."""
        lost, self._in_flight = self._in_flight, ()
        for connection in self._connections:
            connection.close()
        for pending in lost:
            pending.lost = PSConnectionError(f"the reply was lost: a request sent after it failed ({error})")
        for connection in lost[0].connections:
            connection.lock.release()

    def _take(self, pending: PendingReply[Any]) -> bool:
        """Let ``pending``'s replies be read, if it is the oldest in flight; True when it is the
        last, whose reading frees the connections."""
        if pending.lost is not None:
            raise pending.lost
        chain = self._in_flight
        if not chain or chain[0] is not pending:
            raise RuntimeError("wait() for the replies in the order their requests were sent")
        self._in_flight = chain[1:]
        return len(chain) == 1

    def _mine(self) -> tuple[PendingReply[Any], ...]:
        """The requests this thread has in flight."""
        chain = self._in_flight
        return chain if chain and chain[0].owner == threading.get_ident() else ()

    def _refuse_reentry(self) -> None:
        if self._mine():
            raise RuntimeError("this client has a request in flight: wait() for its reply before the next request")

    def _check_group_push(self, name: str, keys: np.ndarray, values: np.ndarray,
                          next_keys: np.ndarray | None = None) -> None:
        """Refuse here what a shard would refuse, before any shard applies its part.

        A group cannot take back a push that the other shards already applied, and a push
        one shard refused while the others counted it would put the shards' step counts
        (schedules, Adam's bias correction) out of step for good. Checked only for tables
        whose shape is known; a table no shard has is refused by all of them alike.
        """
        shape = self._table_shape(name)
        if shape is None:
            return
        size, width = shape
        check_width(name, width, keys, values)
        check_keys(name, keys, size, size)
        check_values(name, keys, values, "push")
        if next_keys is not None:
            check_keys(name, next_keys, size, size)

    def _check_group_set(self, name: str, values: np.ndarray) -> None:
        """set_table's checks, for the same reason: a wrong row count or a NaN is refused by some shards only."""
        shape = self._table_shape(name)
        if shape is None:
            return
        if values.shape != shape:
            raise PSError(f"table {name!r} has shape {shape}; set_table sent {values.shape}")
        check_values(name, np.arange(len(values)), values, "set_table")

    def _table_shape(self, name: str) -> tuple[int, int] | None:
        """The table's global (size, width), from create_table or, once per table, the first shard's status."""
        if name not in self._shapes:
            if self._mine():
                raise RuntimeError(f"table {name!r}: this client does not know its shape yet and cannot ask with "
                                   "a request in flight; pull from it (or create it) before sending requests "
                                   "behind others")
            tables = self._one(Opcode.STATUS, [], decode_json)["tables"]
            self._shapes.update({table: (int(document["spec"]["size"]), int(document["spec"]["width"]))
                                 for table, document in tables.items()})
        return self._shapes.get(name)

    @staticmethod
    def _gathered(split: Split, parts: list[np.ndarray]) -> np.ndarray:
        return split.gather(parts, max(part.shape[1] for part in parts))


def _begin(opcode: int, connections: list[Connection], requests: Sequence[Sequence[Buffer]], *,
           lock: bool = False) -> list[Connection]:
    """Send each connection its request, holding its lock until :func:`_collect` (acquired
    here if ``lock``, else already held by the caller); returns the connections that now
    owe a reply.

    Nothing is sent unless every part fits its frame limit. If a send fails, that
    connection is closed (part of a frame may have gone out) and the replies already owed
    are read (the other streams stay in step) before the error is raised.
    """
    held: list[Connection] = [] if lock else list(connections)
    sent: list[Connection] = []
    try:
        if lock:
            for connection in connections:
                connection.lock.acquire()
                held.append(connection)
        for connection, parts in zip(connections, requests):
            connection.check_length(parts)
        for connection, parts in zip(connections, requests):
            try:
                connection.begin(opcode, parts)
            except BaseException:
                connection.close()
                raise
            sent.append(connection)
    except BaseException:
        for connection in held[len(sent):]:
            connection.lock.release()
        try:
            _collect(opcode, sent, _no_reply)
        except Exception:
            pass  # the send's own error is the one to report
        raise
    return sent


def _collect(opcode: int, connections: list[Connection], decode: Callable[[memoryview], T], *,
             release: bool = True) -> list[T]:
    """Read every connection's reply, then release the connections' locks (unless more
    requests are in flight on them).

    Each connection must read the reply to each request it sent, or its stream would
    fall out of step; so a refusal from one shard is raised only once all are read.
    """
    results: list[T] = []
    failure: BaseException | None = None
    try:
        for connection in connections:
            try:
                results.append(connection.finish(opcode, decode))
            except Exception as error:
                failure = failure or error
    finally:
        if release:
            for connection in connections:
                connection.lock.release()
    if failure is not None:
        raise failure
    return results


def tls_context(tls: ssl.SSLContext | str | bool | None) -> ssl.SSLContext | None:
    """A client context: given as is, trusting one CA file, or the system's CAs for True."""
    if tls is None or tls is False:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is True:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=tls)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot load the CA file {tls!r} for TLS: {error}") from error


def as_keys(keys: Any) -> np.ndarray:
    """Contiguous little-endian int32 if the keys fit the caller's 32-bit dtype, else int64."""
    array = np.asarray(keys)
    if array.ndim == 1 and array.size == 0:
        return np.empty(0, dtype="<i4")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"keys must be a 1-D array of integers, got dtype {array.dtype} and shape {array.shape}")
    narrow = array.dtype.itemsize < 4 or (array.dtype.itemsize == 4 and array.dtype.kind == "i")
    return np.ascontiguousarray(array, dtype="<i4" if narrow else "<i8")


def same_key_dtype(keys: np.ndarray, next_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One request carries one key width, so mixed widths are both widened."""
    if keys.dtype == next_keys.dtype:
        return keys, next_keys
    return keys.astype("<i8"), next_keys.astype("<i8")


def as_values(table: str, values: Any, rows: int) -> np.ndarray:
    """A contiguous float32 (rows, width) array; a 1-D array is one column."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or len(array) != rows:
        raise ValueError(
            f"values for table {table!r} must have one row per key: shape ({rows}, width), "
            f"got {np.shape(values)}"
        )
    return np.ascontiguousarray(array, dtype="<f4")
