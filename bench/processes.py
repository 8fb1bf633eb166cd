"""The helper processes the benchmarks run beside what they measure (a Redis server, a moto
S3 server): a free loopback port to give one, and a stop that cannot hang."""

from __future__ import annotations

import socket
import subprocess

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """Ask it to end; kill it if it has not within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
