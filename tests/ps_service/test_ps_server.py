"""The server over real TCP on 127.0.0.1, served from a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from ps_service.auth import sign
from ps_service.client import PSClient
from ps_service.errors import PSAuthError, PSConnectionError, PSError
from ps_service.protocol import (
    FLAG_STOP,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    Opcode,
    Status,
    decode_header,
    encode_header,
    encode_hello,
    encode_table_request,
)
from ps_service.server import ParameterServer

pytestmark = pytest.mark.timeout(60)

TOKEN = "run-1234-secret"


@pytest.fixture
def server():
    with ParameterServer() as running:
        yield running


@pytest.fixture
def client(server):
    with PSClient(server.address) as connected:
        yield connected


@pytest.fixture
def secured():
    with ParameterServer(token=TOKEN) as running:
        yield running


def read_frame(sock: socket.socket) -> tuple:
    """One reply frame read by hand, or None if the server closed the connection."""
    data = b""
    while len(data) < HEADER_SIZE:
        try:
            chunk = sock.recv(HEADER_SIZE - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    header = decode_header(data)
    body = b""
    while len(body) < header.body_length:
        body += sock.recv(header.body_length - len(body))
    return header, body


@pytest.fixture
def raw_connection(connect_raw) -> Callable[[str], socket.socket]:
    """``raw_connection(address)``: a raw socket that has read the server's HELLO (and sent no token)."""

    def open_connection(address: str) -> socket.socket:
        sock = connect_raw(address)
        hello, _nonce = read_frame(sock)
        assert hello.opcode == Opcode.HELLO
        return sock

    return open_connection


def test_pull_push_and_push_pull(client):
    client.create_table("w", 100, width=2, learning_rate=0.5)
    np.testing.assert_array_equal(client.pull("w", [3, 4]), np.zeros((2, 2), dtype=np.float32))
    client.push("w", np.array([3, 3, 9]), np.array([[1, 2], [1, 2], [4, 4]], dtype=np.float32))
    pulled = client.pull("w", np.array([3, 9], dtype=np.int64))
    np.testing.assert_allclose(pulled, [[-1, -2], [-2, -2]])
    assert pulled.dtype == np.float32 and pulled.shape == (2, 2)
    after = client.push_pull("w", [9], [[2, 2]], np.array([9, 3, 0], dtype=np.int32))
    np.testing.assert_allclose(after, [[-3, -3], [-1, -2], [0, 0]])


def test_width_one_tables_accept_flat_gradients_and_empty_pulls(client):
    client.create_table("lr", 10, learning_rate=1.0)
    client.push("lr", np.array([1, 2], dtype=np.uint8), np.array([0.5, 0.25]))
    np.testing.assert_allclose(client.pull("lr", [2, 1])[:, 0], [-0.25, -0.5])
    assert client.pull("lr", []).shape == (0, 1)


def test_get_and_set_whole_table(client):
    client.create_table("mf", 5, width=3, initializer="normal", seed=3)
    values = np.arange(15, dtype=np.float32).reshape(5, 3)
    client.set_table("mf", values)
    np.testing.assert_array_equal(client.get_table("mf"), values)
    with pytest.raises(PSError, match="has shape \\(5, 3\\)"):
        client.set_table("mf", values[:4])


def test_drop_table_frees_the_name_for_a_new_table(client):
    client.create_table("run-1", 5, optimizer="sgd", learning_rate=1.0)
    client.push("run-1", [2], [1.0])
    client.drop_table("run-1")
    assert "run-1" not in client.status()["tables"]
    with pytest.raises(PSError, match="no table named 'run-1'"):
        client.pull("run-1", [2])
    with pytest.raises(PSError, match="no table named 'run-1'"):
        client.drop_table("run-1")
    client.create_table("run-1", 5, width=2)  # another spec under the same name is a new table
    assert not client.get_table("run-1").any()


def test_seeded_normal_tables_are_reproducible_across_servers(client):
    client.create_table("a", 20, width=2, initializer="normal", init_scale=0.1, seed=5)
    with ParameterServer() as other, PSClient(other.address) as other_client:
        other_client.create_table("a", 20, width=2, initializer="normal", init_scale=0.1, seed=5)
        np.testing.assert_array_equal(client.get_table("a"), other_client.get_table("a"))


def test_create_table_is_idempotent_and_refuses_a_conflicting_spec(client):
    assert client.create_table("w", 10, optimizer="adagrad", learning_rate=0.2)["created"]
    again = client.create_table("w", 10, optimizer="adagrad", learning_rate=0.2)
    assert not again["created"] and again["spec"]["options"]["initial_accumulator"] == 0.1
    with pytest.raises(PSError, match="already exists with a different spec.*learning_rate"):
        client.create_table("w", 10, optimizer="adagrad", learning_rate=0.3)


def test_out_of_range_key_is_an_error_reply_and_the_table_is_unchanged(client):
    client.create_table("w", 10, initializer="normal", seed=2)
    before = client.get_table("w")
    with pytest.raises(PSError, match="table 'w' has 10 keys.*key 10 is out of range"):
        client.push("w", [1, 10], [1.0, 1.0])
    with pytest.raises(PSError, match="key 12 is out of range"):
        client.push_pull("w", [1], [1.0], [12])
    np.testing.assert_array_equal(client.get_table("w"), before)
    assert client.status()["tables"]["w"]["updates"] == 0


def test_errors_name_unknown_tables_and_keep_the_connection_usable(client):
    with pytest.raises(PSError, match="no table named 'missing'"):
        client.pull("missing", [1])
    client.create_table("w", 3)
    with pytest.raises(PSError, match="width 1"):
        client.push("w", [0], [[1.0, 2.0]])
    assert client.pull("w", [0]).shape == (1, 1)


def test_client_checks_one_gradient_row_per_key(client):
    client.create_table("w", 3)
    with pytest.raises(ValueError, match="one row per key"):
        client.push("w", [0, 1], [1.0])
    with pytest.raises(TypeError, match="integers"):
        client.pull("w", [0.5])


def test_right_token_is_admitted(secured):
    with PSClient(secured.address, token=TOKEN) as client:
        client.create_table("w", 4)
        assert client.pull("w", [0, 1]).shape == (2, 1)


def test_wrong_token_is_refused(secured):
    with pytest.raises(PSAuthError, match="refused the connection: authentication failed"):
        PSClient(secured.address, token="guess")
    with PSClient(secured.address, token=TOKEN) as admin:
        assert admin.status()["auth_failures"] == 1


def test_missing_token_is_refused_by_the_client_before_sending(secured):
    with pytest.raises(PSAuthError, match="requires a token"):
        PSClient(secured.address)


def test_a_peer_that_skips_authentication_gets_a_refusal_and_no_data(secured, raw_connection):
    with PSClient(secured.address, token=TOKEN) as admin:
        admin.create_table("w", 4, initializer="normal", seed=1)
    with raw_connection(secured.address) as sock:
        body = b"".join(encode_table_request("w", keys=np.arange(4, dtype=np.int64)))
        sock.sendall(encode_header(Opcode.PULL, 1, len(body)) + body)
        reply, message = read_frame(sock)
        assert reply.status == Status.AUTH_FAILED
        assert b"no token" in message
        assert read_frame(sock) is None


def test_token_never_crosses_the_wire(receive_exactly):
    """A fake server records every byte the client sends while it authenticates."""
    nonce = bytes(range(32))
    captured = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def fake_server() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                hello = encode_hello(0, 1, nonce)
                connection.sendall(encode_header(Opcode.HELLO, 0, len(hello)) + hello)
                header = receive_exactly(connection, HEADER_SIZE)
                captured.extend(header + receive_exactly(connection, decode_header(header).body_length))
                connection.sendall(encode_header(Opcode.AUTH, decode_header(header).request_id, 0))
                while chunk := connection.recv(65536):
                    captured.extend(chunk)

        thread = threading.Thread(target=fake_server)
        thread.start()
        with PSClient(f"127.0.0.1:{listener.getsockname()[1]}", token=TOKEN, timeout=10):
            pass
        thread.join(10)

    assert sign(TOKEN, nonce) in captured  # the capture did see the client's answer
    assert TOKEN.encode() not in captured


def test_status_reports_updates_traffic_reports_and_tables(client, server):
    client.create_table("lr", 100, optimizer="adagrad", learning_rate=0.1)
    client.create_table("mf", 10, width=3)
    for step in range(3):
        client.push("lr", [1, 2, 3, 3], [0.1, 0.2, 0.3, 0.3])
    client.pull("mf", [0, 1])
    client.report("lr", "train_loss", 0.69, count=128, worker="w-3")
    client.report("lr", "test_loss", 0.71, count=1000)
    status = client.status()
    assert status["address"] == server.address
    assert status["uptime_s"] >= 0
    assert status["clients"] == 1
    assert status["updates"] == 3
    assert status["keys_in"] == 12 and status["keys_out"] == 2
    assert status["bytes_in"] > 0 and status["bytes_out"] > 0
    assert status["stop"] is False
    lr = status["tables"]["lr"]
    assert lr["updates"] == 3 and lr["stop"] is False
    assert lr["spec"]["optimizer"] == "adagrad" and lr["spec"]["size"] == 100
    assert [(r["worker"], r["name"], r["value"], r["count"]) for r in lr["reports"]] == [
        ("w-3", "train_loss", 0.69, 128),
        (None, "test_loss", 0.71, 1000),
    ]
    assert all(abs(r["t"] - time.time()) < 3600 for r in lr["reports"])
    assert status["tables"]["mf"]["updates"] == 0


def test_status_reports_since_a_time_carries_only_newer_reports(client):
    client.create_table("lr", 10)
    client.create_table("mf", 10, width=2)
    for value in (0.9, 0.8, 0.7):
        client.report("lr", "train_loss", value, count=1)
        time.sleep(0.01)  # distinct server times
    seen = client.status()["tables"]["lr"]["reports"]
    client.report("mf", "train_loss", 1.5, count=1)
    newer = client.status(reports_since=seen[0]["t"])
    assert [r["value"] for r in newer["tables"]["lr"]["reports"]] == [0.8, 0.7]  # oldest first, as ever
    assert [r["value"] for r in newer["tables"]["mf"]["reports"]] == [1.5]
    latest = client.status(reports_since=seen[-1]["t"])
    assert latest["tables"]["lr"]["reports"] == [] and latest["tables"]["lr"]["updates"] == 0
    assert [r["value"] for r in client.status()["tables"]["lr"]["reports"]] == [0.9, 0.8, 0.7]
    for bad in ("yesterday", float("nan"), float("inf")):
        with pytest.raises(PSError, match="reports_since must be a time"):
            client.status(reports_since=bad)


def test_stop_of_one_table_reaches_its_workers_through_a_normal_pull(server):
    with PSClient(server.address) as driver, PSClient(server.address) as worker:
        driver.create_table("a", 4)
        driver.create_table("b", 4)
        worker.pull("a", [0])
        assert not worker.stop_requested
        driver.stop("a")
        worker.pull("b", [0])
        assert not worker.stop_requested
        worker.pull("a", [0])
        assert worker.stop_requested
        assert driver.status()["tables"]["a"]["stop"] is True


def test_global_stop_flags_every_reply(server):
    with PSClient(server.address) as driver, PSClient(server.address) as worker:
        driver.create_table("a", 4)
        driver.stop()
        worker.push("a", [1], [1.0])
        assert worker.stop_requested
        assert worker.status()["stop"] is True


def test_concurrent_pushes_from_several_threads_all_land(server):
    size, threads, pushes = 64, 4, 50
    with PSClient(server.address) as admin:
        admin.create_table("w", size, learning_rate=1.0)

    def work(worker: int) -> None:
        keys = np.arange(size)
        with PSClient(server.address) as client:
            for step in range(pushes):
                client.push("w", keys, np.full(size, worker + 1, dtype=np.float32))

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    with PSClient(server.address) as admin:
        expected = -pushes * sum(range(1, threads + 1))
        np.testing.assert_array_equal(admin.get_table("w")[:, 0], np.full(size, expected))
        assert admin.status()["updates"] == threads * pushes


def test_bad_version_frame_gets_an_error_and_the_server_keeps_serving(server, client, raw_connection):
    with raw_connection(server.address) as sock:
        sock.sendall(HEADER.pack(MAGIC, 99, Opcode.STATUS, 0, 0, 7, 0))
        reply, message = read_frame(sock)
        assert reply.status == Status.ERROR and reply.request_id == 7
        assert b"version 99" in message
        assert read_frame(sock) is None
    client.create_table("w", 2)
    assert client.status()["errors"] == 1


def test_oversized_frame_is_refused_without_reading_its_body(raw_connection):
    with ParameterServer(max_frame_bytes=1024) as server:
        with raw_connection(server.address) as sock:
            sock.sendall(encode_header(Opcode.PUSH, 3, 10_000))
            reply, message = read_frame(sock)
            assert reply.status == Status.ERROR and b"exceeds the maximum" in message
        with PSClient(server.address, max_frame_bytes=1024) as client:
            client.create_table("big", 1000)
            with pytest.raises(PSError, match="exceeds the frame limit"):
                client.get_table("big")


def _pull_frame(request_id: int, keys: list[int]) -> bytes:
    body = b"".join(bytes(part) for part in encode_table_request("w", keys=np.array(keys, dtype="<i4")))
    return encode_header(Opcode.PULL, request_id, len(body)) + body


def test_frames_split_anywhere_or_sent_together_are_each_answered_in_order(server, client, raw_connection):
    client.create_table("w", 8)
    client.push("w", np.arange(8), -np.arange(8, dtype=np.float32))
    expected = client.pull("w", np.arange(1, 6))[:, 0].tolist()
    stream = b"".join(_pull_frame(request_id, [request_id]) for request_id in range(1, 6))
    with raw_connection(server.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(stream)  # five frames in one write
        for cut in (1, HEADER_SIZE - 1, HEADER_SIZE + 3):  # then split inside the header and the body
            sock.sendall(stream[:cut])
            time.sleep(0.05)
            sock.sendall(stream[cut:])
        replies = [read_frame(sock) for _ in range(20)]
    assert [reply.request_id for reply, _body in replies] == [1, 2, 3, 4, 5] * 4
    assert all(reply.status == Status.OK for reply, _body in replies)
    values = [np.frombuffer(body, dtype="<f4", offset=8)[0] for _reply, body in replies]
    assert values == expected * 4 and len(set(expected)) == 5


def test_frames_larger_than_the_receive_buffer_are_served_and_the_connection_stays_usable(client):
    rows = 3_000_000  # 12 MB, far beyond the server's initial 256 kB receive buffer
    client.create_table("big", rows)
    values = np.arange(rows, dtype=np.float32)
    for scale in (1.0, 2.0):
        client.set_table("big", values * scale)
        np.testing.assert_array_equal(client.pull("big", [0, 1, rows - 1])[:, 0], [0.0, scale, (rows - 1) * scale])
    np.testing.assert_array_equal(client.get_table("big")[:, 0], values * 2)


def test_reply_over_the_clients_own_limit_says_it_is_the_clients(server, client):
    client.create_table("big", 1000)
    with PSClient(server.address, max_frame_bytes=1024) as small, pytest.raises(PSError) as refused:
        small.get_table("big")
    assert "this client's max_frame_bytes" in str(refused.value)
    assert "server" not in str(refused.value)


def stall_a_big_reply(address: str, connect_raw: Callable[[str], socket.socket]) -> socket.socket:
    """A client that asks for a large table several times and never reads: the server's writes back up."""
    with PSClient(address) as admin:
        admin.create_table("big", 4_000_000)
    sock = connect_raw(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    read_frame(sock)  # HELLO
    body = b"".join(encode_table_request("big"))
    for request_id in range(3):
        sock.sendall(encode_header(Opcode.GET_TABLE, request_id, len(body)) + body)
    with PSClient(address) as observer:
        give_up = time.monotonic() + 10
        while observer.status()["keys_out"] < 4_000_000:
            assert time.monotonic() < give_up, "the server never answered the stalled client's first request"
            time.sleep(0.02)
    return sock


@pytest.mark.parametrize("how", ["stop_thread", "shutdown request"])
def test_a_client_that_stops_reading_cannot_keep_the_server_running(how, connect_raw):
    server = ParameterServer()
    server.start_in_thread()
    stalled = stall_a_big_reply(server.address, connect_raw)
    try:
        if how == "shutdown request":
            PSClient(server.address).shutdown()
        server.stop_thread(timeout_s=10)  # raises if the server is still waiting on the stalled client
    finally:
        stalled.close()
        server.stop_thread()
    with pytest.raises(PSConnectionError, match="cannot connect"):
        PSClient(server.address, timeout=2)


def test_shutdown_stops_the_server_and_flags_the_reply(server):
    client = PSClient(server.address)
    client.shutdown()
    assert client.stop_requested
    with pytest.raises(PSConnectionError, match="closed"):
        client.status()
    server.stop_thread()  # returns once the serving thread has finished on its own
    with pytest.raises(PSConnectionError, match="cannot connect"):
        PSClient(server.address, timeout=2)


def test_connection_refused_names_the_address_and_what_to_check():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PSConnectionError, match=f"127.0.0.1:{port}.*listening on HOST:PORT"):
        PSClient(f"127.0.0.1:{port}", timeout=2)


def test_reply_stop_bit_is_in_the_header_flags(server, client, raw_connection):
    client.create_table("w", 2)
    client.stop("w")
    with raw_connection(server.address) as sock:
        body = b"".join(encode_table_request("w", keys=np.array([0], dtype=np.int64)))
        sock.sendall(encode_header(Opcode.PULL, 5, len(body)) + body)
        reply, _ = read_frame(sock)
        assert reply.flags & FLAG_STOP
