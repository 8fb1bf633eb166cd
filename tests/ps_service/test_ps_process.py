"""``python -m ps_service`` and ``start_local_server``: the server as its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ps_service.serve import main
from ps_service.client import PSClient
from ps_service.errors import PSAuthError
from ps_service.launcher import start_local_server

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ps_service", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds,
    )


def test_module_prints_the_listening_line_and_exits_on_sigterm(read_line):
    process = spawn("--port", "0")
    try:
        line = read_line(process)
        assert line.startswith("listening on 127.0.0.1:")
        address = line.removeprefix("listening on ").strip()
        with PSClient(address) as client:
            client.create_table("w", 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()
        process.wait()


def test_module_exits_cleanly_on_a_shutdown_request(tmp_path, read_line):
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    process = spawn("--token-file", str(token_file))
    try:
        address = read_line(process).removeprefix("listening on ").strip()
        with PSClient(address, token="abc") as client:
            client.shutdown()
        assert process.wait(20) == 0
    finally:
        process.kill()
        process.wait()


def test_module_shuts_down_when_its_lifeline_closes(read_line):
    child_end, lifeline = os.pipe()
    process = spawn("--lifeline-fd", str(child_end), pass_fds=(child_end,))
    os.close(child_end)
    try:
        assert read_line(process).startswith("listening on ")
        os.close(lifeline)
        assert process.wait(20) == 0
        assert "is gone; shutting down" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_main_refuses_a_lifeline_that_is_not_open(capsys):
    closed_fd = os.open(os.devnull, os.O_RDONLY)
    os.close(closed_fd)
    assert main(["--lifeline-fd", str(closed_fd)]) == 2
    assert f"--lifeline-fd {closed_fd} is not an open file descriptor" in capsys.readouterr().err


def test_local_server_dies_with_the_process_that_started_it(read_line, running, wait_until_gone):
    """SIGKILL gives the starter no chance to stop its server: the lifeline must end it."""
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from ps_service.launcher import start_local_server
        server = start_local_server(token="t")
        print(server.pid, flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(read_line(starter))
    finally:
        starter.kill()
        starter.wait()
    try:
        assert wait_until_gone(server_pid, timeout_s=10.0), "the parameter server outlived the process that started it"
    finally:
        if running(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_main_refuses_an_empty_token_file(tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    assert main(["--token-file", str(token_file)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_main_reports_a_port_in_use(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_local_server_serves_pull_push_and_push_pull_with_a_token():
    with start_local_server(token="tok-42") as server:
        host, port = server.address.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        with PSClient(server.address, token="tok-42") as client:
            client.create_table("w", 10, optimizer="adagrad", learning_rate=0.5)
            client.push("w", [1, 1], [1.0, 1.0])
            pulled = client.pull("w", [1, 2])
            # accumulator 0.1 + 2^2, step 0.5 * 2 / sqrt(4.1)
            np.testing.assert_allclose(pulled[:, 0], [-1 / np.sqrt(4.1), 0.0], rtol=1e-5)
            after = client.push_pull("w", [2], [1.0], [2])
            assert after[0, 0] < 0
        with pytest.raises(PSAuthError):
            PSClient(server.address, token="nope")
    assert not server.running


def test_local_server_keeps_the_token_off_the_command_line_and_disk():
    with start_local_server(token="very-secret-token") as server:
        command = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert not any(b"very-secret-token" in part for part in command)
        token_path = command[command.index(b"--token-file") + 1].decode()
        assert not os.path.exists(token_path)


def test_local_server_stop_ends_the_process():
    server = start_local_server()
    assert server.running
    server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
