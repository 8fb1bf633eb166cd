"""Helpers shared by the parameter-server tests, as fixtures: polling, in-thread server groups,
process liveness, reading a child's stdout, and raw sockets for talking to a server by hand."""

from __future__ import annotations

import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ps_service.server import ParameterServer


def _wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    give_up = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < give_up, f"gave up waiting for {what}"
        time.sleep(0.02)
    return result


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(condition, what, timeout_s=15)``: poll until ``condition()`` is truthy and return
    that value; fail the test, naming ``what``, once the timeout passes."""
    return _wait_for


@contextmanager
def _group(shards: int = 1, **options: Any) -> Iterator[str]:
    servers = [ParameterServer(shard=index, shards=shards, **options) for index in range(shards)]
    try:
        yield ",".join(server.start_in_thread() for server in servers)
    finally:
        for server in servers:
            server.stop_thread()


@pytest.fixture
def group() -> Callable[..., Any]:
    """``with group(shards=1, **options) as address``: ``shards`` in-thread ParameterServers forming one
    group; ``address`` is the group address, the members' addresses joined by commas in shard order."""
    return _group


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until_gone(pid: int, timeout_s: float = 15.0) -> bool:
    give_up = time.monotonic() + timeout_s
    while _running(pid):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def running() -> Callable[[int], bool]:
    """``running(pid)``: whether ``pid`` still runs; a zombie nobody reaps (an orphan under a
    container's init) has ended."""
    return _running


@pytest.fixture
def wait_until_gone() -> Callable[..., bool]:
    """``wait_until_gone(pid, timeout_s=15)``: whether ``pid`` ended within the timeout."""
    return _wait_until_gone


def _read_line(process: subprocess.Popen, timeout_s: float = 20.0) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout_s), f"no output within {timeout_s} s"
    return process.stdout.readline()


@pytest.fixture
def read_line() -> Callable[..., str]:
    """``read_line(process, timeout_s=20)``: the next stdout line, failing the test (not hanging it)
    if none comes."""
    return _read_line


def _connect_raw(address: str, timeout_s: float = 10.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"the peer closed the connection after {len(data)} of the {count} bytes expected"
        data += chunk
    return bytes(data)


@pytest.fixture
def connect_raw() -> Callable[..., socket.socket]:
    """``connect_raw(address, timeout_s=10)``: a plain TCP socket to ``host:port``; nothing read yet."""
    return _connect_raw


@pytest.fixture
def receive_exactly() -> Callable[[socket.socket, int], bytes]:
    """``receive_exactly(sock, count)``: exactly ``count`` bytes; fails the test if the peer closes first."""
    return _receive_exactly
