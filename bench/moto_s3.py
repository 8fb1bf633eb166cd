"""An S3 API on loopback for the benchmarks: a moto server in a process of its own.

A benchmark that passes ``--storage s3`` keeps its data and its scratch objects there, so
that a design which goes to storage at every step pays for an HTTP request each time, as
it would against S3, rather than for a file in the page cache. moto answers in a few
milliseconds (its own measured latency is printed); S3 takes longer, so what it shows is
still a lower bound on the gap. The server runs in its own process so that its work does
not hold the benchmark's interpreter lock; it takes CPU from the same two cores as
everything else, a cost the designs that touch storage most pay most.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.processes import HOST, free_port, stop_process
from cirrus_airflow.storage import Storage

BUCKET = "cirrus-bench"
_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoUnavailable(RuntimeError):
    """moto's server is not installed (it comes with the dev extra)."""


@contextlib.contextmanager
def moto_s3(timeout_s: float = 30.0) -> Iterator[str]:
    """Start the server, point every boto3 client of this process and of the workers it starts
    (they inherit the environment) at it, create the bucket; yields ``s3://BUCKET``."""
    try:
        import moto.server  # noqa: F401  (only to say what is missing before starting a process)
    except ImportError as error:
        raise MotoUnavailable(f"{error} (install the dev extra: pip install -e '.[dev]')") from None
    port = free_port()
    saved = {name: os.environ.get(name) for name in (*_ENVIRONMENT, "AWS_ENDPOINT_URL_S3")}
    server: subprocess.Popen | None = None
    try:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update({**_ENVIRONMENT, "AWS_ENDPOINT_URL_S3": f"http://{HOST}:{port}"})
        _create_bucket(server, timeout_s)
        yield f"s3://{BUCKET}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if server is not None:
            stop_process(server)


def upload_tree(folder: Path, prefix: str) -> None:
    """Copy a local folder under an S3 prefix (data prepared locally, then read from S3)."""
    storage = Storage()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def request_latency_ms(prefix: str, size: int, rounds: int = 20) -> tuple[float, float]:
    """The median PUT and GET of one object of ``size`` bytes, in milliseconds."""
    storage, uri, body = Storage(), f"{prefix}/latency-probe", os.urandom(size)
    puts, gets = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        storage.write_bytes(uri, body)
        written = time.perf_counter()
        storage.read_bytes(uri)
        puts.append(written - started)
        gets.append(time.perf_counter() - written)
    storage.delete(uri)
    return 1e3 * sorted(puts)[rounds // 2], 1e3 * sorted(gets)[rounds // 2]


def _create_bucket(server: subprocess.Popen, timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the moto server exited with code {server.returncode} before it answered")
        try:
            Storage().s3.create_bucket(Bucket=BUCKET)
            return
        except Exception as error:  # not listening yet: botocore raises its connection errors
            if time.monotonic() > give_up:
                raise RuntimeError(f"the moto server did not answer within {timeout_s} s: {error}") from error
            time.sleep(0.2)
