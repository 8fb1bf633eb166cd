"""A server facing hostile or broken peers: refused authentication, a fuzzed stream of
malformed frames, idle and stalled connections, and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ps_service.auth import NONCE_BYTES, sign
from ps_service.client import PSClient
from ps_service.errors import ProtocolError, PSAuthError, PSConnectionError
from ps_service.launcher import start_local_server
from ps_service.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    FrameHeader,
    Opcode,
    Status,
    decode_hello,
    encode_header,
    encode_json,
    encode_table_request,
)
from ps_service.serve import server_tls_context
from ps_service.server import ParameterServer

pytestmark = pytest.mark.timeout(60)

TOKEN = "robustness-token"


def receive_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or goes quiet for the timeout)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def split_frames(data: bytes) -> list[tuple[FrameHeader, bytes]]:
    """Parse a byte stream from the server into frames; every byte must belong to a well-formed frame."""
    frames, offset = [], 0
    while offset < len(data):
        assert len(data) - offset >= HEADER_SIZE, "the server sent a partial frame header"
        magic, version, opcode, flags, status, request_id, length = HEADER.unpack_from(data, offset)
        assert (magic, version) == (MAGIC, VERSION)
        body = data[offset + HEADER_SIZE: offset + HEADER_SIZE + length]
        assert len(body) == length, "the server sent a partial frame body"
        frames.append((FrameHeader(opcode, flags, status, request_id, length), body))
        offset += HEADER_SIZE + length
    return frames


@pytest.fixture
def authenticated_socket(connect_raw, receive_exactly) -> Callable[..., socket.socket]:
    """``authenticated_socket(address, token=TOKEN)``: a raw connection past the handshake, the HMAC done by hand."""

    def open_socket(address: str, token: str | None = TOKEN) -> socket.socket:
        sock = connect_raw(address)
        header = HEADER.unpack(receive_exactly(sock, HEADER_SIZE))
        nonce = decode_hello(receive_exactly(sock, header[6])).nonce
        assert header[2] == Opcode.HELLO
        if token is not None:
            assert len(nonce) == NONCE_BYTES
            sock.sendall(encode_header(Opcode.AUTH, 1, 32) + sign(token, nonce))
            reply = HEADER.unpack(receive_exactly(sock, HEADER_SIZE))
            assert reply[4] == Status.OK and reply[6] == 0
        return sock

    return open_socket


# Refused authentication -------------------------------------------------------------------

SECRET_ROW = np.full((1, 4), 1234.5678, dtype=np.float32)


@pytest.fixture
def secured() -> Iterator[ParameterServer]:
    with ParameterServer(token=TOKEN, handshake_timeout_s=0.5) as server:
        with PSClient(server.address, token=TOKEN) as admin:
            admin.create_table("secret", 8, width=4)
            admin.set_table("secret", np.repeat(SECRET_ROW, 8, axis=0))
        yield server


def pull_frame(request_id: int = 9) -> bytes:
    body = b"".join(encode_table_request("secret", keys=np.arange(8, dtype=np.int64)))
    return encode_header(Opcode.PULL, request_id, len(body)) + body


ATTACKS: dict[str, Callable[[bytes], bytes]] = {
    "a pull instead of an answer": lambda nonce: pull_frame(),
    "a wrong digest": lambda nonce: encode_header(Opcode.AUTH, 1, 32) + sign("guess", nonce) + pull_frame(),
    "a digest for another nonce": lambda nonce: (encode_header(Opcode.AUTH, 1, 32)
                                                 + sign(TOKEN, bytes(32)) + pull_frame()),
    "a short digest": lambda nonce: encode_header(Opcode.AUTH, 1, 8) + sign(TOKEN, nonce)[:8] + pull_frame(),
    "the token in clear": lambda nonce: (encode_header(Opcode.AUTH, 1, len(TOKEN)) + TOKEN.encode()
                                         + pull_frame()),
    "a huge frame": lambda nonce: encode_header(Opcode.AUTH, 1, 2**31) + bytes(1000),
    "silence": lambda nonce: b"",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_refused_authentication_sends_only_the_greeting_and_a_refusal(secured, attack, connect_raw, receive_exactly):
    with PSClient(secured.address, token=TOKEN) as admin:
        before = admin.status()
    with connect_raw(secured.address) as sock:
        header = HEADER.unpack(receive_exactly(sock, HEADER_SIZE))
        nonce = decode_hello(receive_exactly(sock, header[6])).nonce
        assert header[2] == Opcode.HELLO and len(nonce) == NONCE_BYTES
        sock.sendall(ATTACKS[attack](nonce))
        rest = receive_all(sock)
    [(refusal, message)] = split_frames(rest)
    assert refusal.opcode == Opcode.AUTH and refusal.status == Status.AUTH_FAILED
    assert message.startswith(b"authentication failed: ")
    assert SECRET_ROW.tobytes()[:4] not in rest
    with PSClient(secured.address, token=TOKEN) as admin:
        status = admin.status()
        assert status["auth_failures"] == 1
        assert status["requests"] == before["requests"] + 1  # this status call: the attacker's pull never ran
        np.testing.assert_array_equal(admin.get_table("secret"), np.repeat(SECRET_ROW, 8, axis=0))


def test_clients_without_the_token_or_with_a_wrong_one_are_refused(secured):
    with pytest.raises(PSAuthError, match="requires a token; pass token="):
        PSClient(secured.address)
    with pytest.raises(PSAuthError, match="refused the connection: authentication failed: the token does not match"):
        PSClient(secured.address, token="wrong")
    with PSClient(secured.address, token=TOKEN) as admin:
        assert admin.status()["auth_failures"] == 1


# A fuzzed stream of malformed frames ---------------------------------------------------------

FUZZ_SIZE, FUZZ_WIDTH = 16, 2
REFERENCE = "reference-table-not-fuzzed"
CONTROL_OPCODES = {Opcode.CREATE_TABLE, Opcode.REPORT, Opcode.REGISTER, Opcode.DEREGISTER, Opcode.STATUS,
                   Opcode.STOP, Opcode.HEARTBEAT}


def valid_frames(rng: np.random.Generator) -> list[bytes]:
    """One well-formed request of every opcode but SHUTDOWN, on the fuzz table ``f``."""
    key_dtype = np.int32 if rng.random() < 0.5 else np.int64
    keys = rng.integers(0, FUZZ_SIZE, 5).astype(key_dtype)
    values = rng.standard_normal((5, FUZZ_WIDTH)).astype(np.float32)
    bodies: dict[int, bytes] = {
        Opcode.HELLO: b"",
        Opcode.AUTH: bytes(32),
        Opcode.CREATE_TABLE: encode_json({"name": "f", "size": FUZZ_SIZE, "width": FUZZ_WIDTH,
                                          "optimizer": "adam", "learning_rate": 0.01, "shard": 0, "shards": 1}),
        Opcode.PULL: b"".join(encode_table_request("f", keys=keys)),
        Opcode.PUSH: b"".join(encode_table_request("f", keys=keys, values=values)),
        Opcode.PUSH_PULL: b"".join(encode_table_request("f", keys=keys, values=values, next_keys=keys[::-1].copy())),
        Opcode.GET_TABLE: b"".join(encode_table_request("f")),
        Opcode.SET_TABLE: b"".join(encode_table_request(
            "f", values=rng.standard_normal((FUZZ_SIZE, FUZZ_WIDTH)).astype(np.float32))),
        Opcode.REPORT: encode_json({"table": "f", "name": "loss", "value": 0.5, "count": 3, "worker": 1}),
        Opcode.STATUS: b"",
        Opcode.STOP: encode_json({"table": "f"}),
        Opcode.REGISTER: encode_json({"run": "fuzz", "worker": int(rng.integers(3)), "generation": 0}),
        Opcode.HEARTBEAT: b"",
        Opcode.DEREGISTER: encode_json({"reason": "handover"}),
    }
    return [encode_header(opcode, int(rng.integers(2**32)), len(body)) + body for opcode, body in bodies.items()]


def with_header_field(frame: bytes, index: int, value: int) -> bytes:
    fields = list(HEADER.unpack(frame[:HEADER_SIZE]))
    fields[index] = value
    return HEADER.pack(*fields) + frame[HEADER_SIZE:]


def table_request(opcode: int, keys: np.ndarray | None, values: np.ndarray | None = None,
                  next_keys: np.ndarray | None = None) -> bytes:
    body = b"".join(encode_table_request("f", keys=keys, values=values, next_keys=next_keys))
    return encode_header(opcode, 77, len(body)) + body


def flip(data: bytes, rng: np.random.Generator, start: int, end: int, count: int) -> bytes:
    mutable = bytearray(data)
    for position in rng.integers(start, end, count):
        mutable[position] ^= int(rng.integers(1, 256))
    return bytes(mutable)


def mutate(frame: bytes, rng: np.random.Generator) -> bytes:
    """One of the ways a frame can be broken, picked at random."""
    kind = int(rng.integers(13))
    opcode = frame[5]
    body_length = len(frame) - HEADER_SIZE
    if kind == 0:
        return frame[: int(rng.integers(1, len(frame)))]  # truncated
    if kind == 1:
        return flip(frame, rng, 0, HEADER_SIZE, int(rng.integers(1, 3)))
    if kind == 2 and body_length:
        return flip(frame, rng, HEADER_SIZE, len(frame), int(rng.integers(1, 4)))
    if kind == 3:
        return with_header_field(frame, 1, int(rng.choice([0, 2, 99, 255])))  # wrong version
    if kind == 4:
        return with_header_field(frame, 6, int(rng.choice([2**20, 2**31, 2**32 - 1])))  # oversized length
    if kind == 5:
        unknown = [value for value in range(256) if value not in set(Opcode)]
        return with_header_field(frame, 2, int(rng.choice(unknown)))
    if kind == 6 and opcode in (Opcode.PULL, Opcode.PUSH, Opcode.PUSH_PULL) and body_length > 2:
        mutable = bytearray(frame)
        mutable[HEADER_SIZE + 2] = int(rng.choice([1, 2, 3, 5, 16, 255]))  # bad key_size
        return bytes(mutable)
    if kind == 7:
        bad = np.array([int(rng.choice([-1, FUZZ_SIZE, FUZZ_SIZE + 100, -(2**40), 2**40]))])
        keys = np.concatenate([rng.integers(0, FUZZ_SIZE, 3), bad])
        rng.shuffle(keys)
        grads = np.ones((4, FUZZ_WIDTH), dtype=np.float32)
        return [table_request(Opcode.PULL, keys), table_request(Opcode.PUSH, keys, grads),
                table_request(Opcode.PUSH_PULL, keys[:3].copy(), grads[:3].copy(), keys)][int(rng.integers(3))]
    if kind == 8:
        grads = rng.standard_normal((4, FUZZ_WIDTH)).astype(np.float32)
        grads[int(rng.integers(4)), int(rng.integers(FUZZ_WIDTH))] = rng.choice([np.nan, np.inf, -np.inf])
        keys = rng.integers(0, FUZZ_SIZE, 4)
        return table_request(Opcode.PUSH if rng.random() < 0.5 else Opcode.PUSH_PULL, keys, grads,
                             None if rng.random() < 0.5 else keys)
    if kind == 9 and opcode in CONTROL_OPCODES:
        garbage = [b"{nope", b"[1, 2]", b'"text"', b"\xff\xfe\x00", b"null", b"[" * 100_000, b'{"a":' * 50_000,
                   json.dumps({"name": 5, "size": "big", "table": [1], "run": {}, "reason": 3}).encode(),
                   rng.bytes(int(rng.integers(1, 40)))]
        body = garbage[int(rng.integers(len(garbage)))]
        return encode_header(opcode, 5, len(body)) + body
    if kind == 10:
        change = int(rng.choice([-8, -1, 1, 8]))
        return with_header_field(frame, 6, max(0, body_length + change))  # length disagrees with the body
    if kind == 11:
        return rng.bytes(int(rng.integers(1, 64)))
    return frame  # sometimes a valid frame, so valid and broken ones interleave


def is_shutdown(data: bytes) -> bool:
    """A mutation that happens to spell a SHUTDOWN request would legitimately stop the server."""
    return len(data) >= 6 and data[:5] == MAGIC + bytes([VERSION]) and data[5] == Opcode.SHUTDOWN


@pytest.fixture
def fuzz_server() -> Iterator[ParameterServer]:
    with ParameterServer(token=TOKEN, max_frame_bytes=1 << 20, handshake_timeout_s=2) as server:
        yield server


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # flipped bytes make huge gradients
def test_a_fuzzed_stream_of_malformed_frames_leaves_the_server_answering_correctly(fuzz_server, seed, caplog,
                                                                                   authenticated_socket):
    caplog.set_level(logging.WARNING, logger="ps_service")
    rng = np.random.default_rng(seed)
    expected_reference = np.zeros((6, 1), dtype=np.float32)
    with PSClient(fuzz_server.address, token=TOKEN) as client:
        client.create_table("f", FUZZ_SIZE, width=FUZZ_WIDTH, optimizer="adam", learning_rate=0.01)
        client.create_table(REFERENCE, 6, optimizer="sgd", learning_rate=1.0)
        applied_pushes, replies = 0, 0
        for case in range(300):
            frames = valid_frames(rng)
            stream = [mutate(frames[int(rng.integers(len(frames)))], rng) for _ in range(int(rng.integers(1, 4)))]
            stream = [frame for frame in stream if not is_shutdown(frame)]
            with authenticated_socket(fuzz_server.address) as sock:
                sock.settimeout(5)
                try:
                    sock.sendall(b"".join(stream))
                    sock.shutdown(socket.SHUT_WR)  # the server sees end of file after the last frame
                except OSError:
                    pass  # the server dropped the connection after a bad header: allowed
                for header, body in split_frames(receive_all(sock)):
                    replies += 1
                    assert b"internal server error" not in body
                    if header.status == Status.OK and header.opcode in (Opcode.PUSH, Opcode.PUSH_PULL):
                        applied_pushes += 1
            if case % 10 == 0:
                keys = rng.integers(0, 6, 3)
                client.push(REFERENCE, keys, np.ones(3, dtype=np.float32))
                np.add.at(expected_reference, keys, -1.0)
        assert replies > 300

        status = client.status()
        assert fuzz_server._thread is not None and fuzz_server._thread.is_alive()
        assert status["errors"] > 0 and status["bad_frames"] > 0
        np.testing.assert_array_equal(client.get_table(REFERENCE), expected_reference)
        assert status["tables"][REFERENCE]["updates"] == 30
        fuzzed_updates = sum(table["updates"] for name, table in status["tables"].items() if name != REFERENCE)
        assert fuzzed_updates == applied_pushes  # only the pushes the server acknowledged changed anything
        assert client.get_table("f").shape == (FUZZ_SIZE, FUZZ_WIDTH)
        # and the server still computes correctly
        client.create_table("after", 4, width=2, learning_rate=0.5)
        client.push("after", [1, 1, 3], [[1, 2], [1, 2], [4, 4]])
        np.testing.assert_array_equal(client.pull("after", [3, 1, 0]), [[-2, -2], [-1, -2], [0, 0]])
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


# Idle and stalled connections ------------------------------------------------------------------

def test_an_idle_connection_is_closed_while_an_active_client_keeps_working(authenticated_socket, wait_for):
    with ParameterServer(token=TOKEN, idle_timeout_s=0.5) as server:
        with PSClient(server.address, token=TOKEN) as active, PSClient(server.address, token=TOKEN) as quiet:
            active.create_table("w", 4, learning_rate=1.0)
            with authenticated_socket(server.address) as idle:
                idle.settimeout(0.05)
                pushes = 0
                give_up = time.monotonic() + 10
                while True:
                    try:
                        if idle.recv(1) == b"":
                            break  # closed by the server
                        pytest.fail("the server sent data on an idle connection")
                    except TimeoutError:
                        pass
                    except ConnectionResetError:
                        break
                    assert time.monotonic() < give_up, "the idle connection was never closed"
                    active.push("w", [0], [1.0])
                    pushes += 1
            assert pushes > 0
            active.push("w", [0], [1.0])
            np.testing.assert_array_equal(active.pull("w", [0]), [[-(pushes + 1.0)]])
            wait_for(lambda: active.status()["clients"] == 1, "the quiet client to be closed as idle too")
            with pytest.raises(PSConnectionError, match="closed the connection"):
                quiet.status()


def test_a_client_that_stops_reading_does_not_block_other_clients(connect_raw, receive_exactly, wait_for):
    with ParameterServer() as server, PSClient(server.address) as admin:
        admin.create_table("big", 2_000_000)
        admin.create_table("w", 8, learning_rate=1.0)
        stalled = connect_raw(server.address)
        try:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            receive_exactly(stalled, HEADER_SIZE)  # HELLO, no token
            body = b"".join(encode_table_request("big"))
            for request_id in range(4):  # 32 MB of replies it never reads
                stalled.sendall(encode_header(Opcode.GET_TABLE, request_id, len(body)) + body)
            wait_for(lambda: admin.status()["keys_out"] >= 2_000_000, "the server to answer the stalled client")
            with PSClient(server.address) as other:
                for step in range(1, 51):
                    other.push("w", np.arange(8), np.ones(8, dtype=np.float32))
                    np.testing.assert_array_equal(other.pull("w", [7])[0], [-float(step)])
                assert other.status()["clients"] == 3
        finally:
            stalled.close()


def _resident_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


def test_headers_alone_do_not_make_the_server_allocate_the_bodies_they_announce(connect_raw, receive_exactly):
    """A receive buffer grows with the bytes that arrive: four 16-byte headers announcing
    200 MB bodies each must not cost the server 800 MB."""
    with start_local_server() as server:
        before = _resident_mb(server.pid)
        peers = []
        try:
            for request_id in range(4):
                peer = connect_raw(server.address)
                receive_exactly(peer, HEADER_SIZE)  # HELLO, no token
                peer.sendall(encode_header(Opcode.SET_TABLE, request_id, 200_000_000) + bytes(64 * 1024))
                peers.append(peer)
            with PSClient(server.address) as client:
                assert client.status()["clients"] == 5  # every header has been read and parsed
            assert _resident_mb(server.pid) - before < 50
        finally:
            for peer in peers:
                peer.close()


def test_requests_sent_behind_a_shutdown_are_not_run(connect_raw, receive_exactly):
    with ParameterServer() as server:
        peer = connect_raw(server.address)
        try:
            hello = HEADER.unpack(receive_exactly(peer, HEADER_SIZE))
            receive_exactly(peer, hello[-1])  # its body: where the server sits in its group; no token
            create = encode_json({"name": "late", "size": 4})
            peer.sendall(encode_header(Opcode.SHUTDOWN, 1, 0)
                         + encode_header(Opcode.CREATE_TABLE, 2, len(create)) + create)
            reply = FrameHeader(*HEADER.unpack(receive_exactly(peer, HEADER_SIZE))[2:])
            assert (reply.opcode, reply.request_id, reply.status) == (Opcode.SHUTDOWN, 1, Status.OK)
            assert peer.recv(HEADER_SIZE) == b""  # closed: the create was neither run nor answered
        finally:
            peer.close()


# TLS ------------------------------------------------------------------------------------------

def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available to make a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(tls_files) -> Iterator[ParameterServer]:
    cert, key = tls_files
    with ParameterServer(token=TOKEN, tls=server_tls_context(cert, key)) as server:
        yield server


@pytest.mark.parametrize("trust", ["ca file", "ssl context"])
def test_a_tls_server_serves_clients_that_trust_its_certificate(tls_server, tls_files, trust):
    cert, _key = tls_files
    tls = str(cert) if trust == "ca file" else ssl.create_default_context(cafile=str(cert))
    with PSClient(tls_server.address, token=TOKEN, tls=tls) as client:
        client.create_table("w", 2_000, width=2, learning_rate=1.0)
        client.push("w", [1, 1, 1999], [[1, 2], [1, 2], [3, 3]])
        np.testing.assert_array_equal(client.pull("w", [1, 1999]), [[-2, -4], [-3, -3]])
        assert client.get_table("w").shape == (2_000, 2)  # a reply spanning many TLS records
        first = client.start_push_pull("w", [1], [[1, 1]], np.arange(2_000))
        second = client.start_pull("w", np.arange(2_000))  # its reply may come in the records of the first's
        np.testing.assert_array_equal(first.wait()[1], [-3, -5])
        np.testing.assert_array_equal(second.wait()[1], [-3, -5])
        status = client.status()
        assert status["tls"] is True and status["auth_failures"] == 0
    with pytest.raises(PSAuthError):
        PSClient(tls_server.address, token="wrong", tls=str(cert))


def test_a_plain_client_of_a_tls_server_fails_instead_of_hanging(tls_server):
    with pytest.raises((PSConnectionError, ProtocolError)):
        PSClient(tls_server.address, token=TOKEN, timeout=1)


def test_a_tls_client_that_does_not_trust_the_certificate_is_refused(tls_server):
    with pytest.raises(PSConnectionError, match="TLS handshake .* failed.*certificate verify failed"):
        PSClient(tls_server.address, token=TOKEN, tls=True, timeout=5)


def test_a_tls_client_of_a_plain_server_fails_clearly(tls_files):
    cert, _key = tls_files
    with ParameterServer() as plain:
        with pytest.raises(PSConnectionError, match="TLS handshake"):
            PSClient(plain.address, tls=str(cert), timeout=5)
        with PSClient(plain.address) as client:
            assert client.status()["tls"] is False


def test_a_local_tls_server_process_serves_and_stops(tls_files):
    cert, key = tls_files
    with start_local_server(token=TOKEN, tls_cert=str(cert), tls_key=str(key)) as server:
        with PSClient(server.address, token=TOKEN, tls=str(cert)) as client:
            client.create_table("w", 3, learning_rate=1.0)
            client.push("w", [2], [5.0])
            np.testing.assert_array_equal(client.pull("w", [2]), [[-5.0]])
            assert client.status()["tls"] is True
    assert not server.running
