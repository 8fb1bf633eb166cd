"""Fixtures for the executor tests: test handlers on disk and local Lambda runtimes that clean up after themselves;
and a moto S3 server reached through an Airflow connection, for the S3 tests."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cirrus_airflow.executor import FunctionConfig, LocalLambdaRuntime

HANDLERS_SOURCE = textwrap.dedent('''
    """Handlers for the local Lambda runtime tests; each one exercises one behaviour of the runtime."""
    import json
    import os
    import pathlib
    import time


    def _record_pid(event):
        """Write this worker's pid where the test can see it, atomically: it also says "the handler started"."""
        if "pid_file" in event:
            path = pathlib.Path(event["pid_file"])
            partial = path.with_name(path.name + ".partial")
            partial.write_text(str(os.getpid()))
            partial.replace(path)


    def echo(event, context):
        print("echo handler saw", json.dumps(event, sort_keys=True))
        return {
            "event": event,
            "pid": os.getpid(),
            "context": {
                "function_name": context.function_name,
                "function_version": context.function_version,
                "invoked_function_arn": context.invoked_function_arn,
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "aws_request_id": context.aws_request_id,
                "log_group_name": context.log_group_name,
                "log_stream_name": context.log_stream_name,
                "remaining_ms": context.get_remaining_time_in_millis(),
            },
            "env": {name: os.environ.get(name) for name in (
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_TIMEOUT",
                "AWS_ENDPOINT_URL_LAMBDA", "AWS_REGION", "AWS_DEFAULT_REGION", "CIRRUS_TEST_SETTING")},
        }


    def fail(event, context):
        raise ValueError(f"cannot use x={event.get('x')!r}")


    def sleep(event, context):
        _record_pid(event)
        time.sleep(event["seconds"])
        return {"slept": event["seconds"], "pid": os.getpid()}


    def remaining_time(event, context):
        first = context.get_remaining_time_in_millis()
        time.sleep(0.2)
        return {"first": first, "second": context.get_remaining_time_in_millis()}


    def allocate(event, context):
        _record_pid(event)
        block = b"\\x01" * (event["mb"] << 20)
        time.sleep(event.get("hold_s", 0))
        allocated = len(block)
        del block  # a spike that is gone by the time the handler returns must still count
        return {"allocated": allocated}


    def hold(event, context):
        """Run until the test creates the release file (or 30 s pass), to keep a concurrency slot busy."""
        _record_pid(event)
        release = pathlib.Path(event["release_file"])
        give_up = time.monotonic() + 30
        while not release.exists() and time.monotonic() < give_up:
            time.sleep(0.02)
        return {"released": release.exists()}


    def touch(event, context):
        pathlib.Path(event["path"]).write_text(json.dumps({"request_id": context.aws_request_id}))
        return {"touched": event["path"]}


    def exit_hard(event, context):
        os._exit(3)


    def unserialisable(event, context):
        return {"ids": {1, 2}}


    def oversized(event, context):
        return "x" * (7 << 20)
''')


@pytest.fixture(scope="session")
def handlers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``cirrus_test_handlers`` module, for the functions' PYTHONPATH."""
    directory = tmp_path_factory.mktemp("handlers")
    (directory / "cirrus_test_handlers.py").write_text(HANDLERS_SOURCE)
    return directory


@pytest.fixture
def function_config(handlers_dir: Path) -> Callable[..., FunctionConfig]:
    """``function_config("echo", timeout_s=1)``: a FunctionConfig running ``cirrus_test_handlers.echo``."""

    def make(handler: str, *, environment: dict[str, str] | None = None, **settings: object) -> FunctionConfig:
        base = {"PYTHONPATH": str(handlers_dir), "CIRRUS_TEST_SETTING": "from-the-function"}
        return FunctionConfig(handler=f"cirrus_test_handlers.{handler}", environment={**base, **(environment or {})},
                              **settings)

    return make


@pytest.fixture
def start_runtime() -> Iterator[Callable[[dict[str, FunctionConfig]], LocalLambdaRuntime]]:
    """Start runtimes for a test; stops them afterwards and checks that their threads are gone."""
    threads_before = set(threading.enumerate())
    runtimes: list[LocalLambdaRuntime] = []

    def start(functions: dict[str, FunctionConfig]) -> LocalLambdaRuntime:
        runtime = LocalLambdaRuntime(functions).start()
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop()
    leaked = [thread.name for thread in set(threading.enumerate()) - threads_before]
    assert not leaked, f"threads left running after stop(): {leaked}"


def _wait_for(condition: Callable[[], object], *, timeout_s: float = 10.0, what: str = "the condition") -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, what=...)``: poll until true; fail after a generous timeout (10 s by default)."""
    return _wait_for


@pytest.fixture
def read_pid() -> Callable[[Path], int]:
    """Wait for a handler's pid file (which also says that the handler started) and read it."""

    def read(path: Path) -> int:
        _wait_for(path.exists, what=f"the handler to write {path.name}")
        return int(path.read_text())

    return read


@pytest.fixture
def process_exists() -> Callable[[int], bool]:
    """Whether a pid still runs. A zombie does not: an orphan is reaped by init, which a container may lack."""

    def exists(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    return exists


@pytest.fixture
def moto_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto server and the Airflow connection ``moto`` that reaches it; no AWS settings are in the
    environment, so whatever works did so through the connection."""
    monkeypatch.setenv("AIRFLOW_CONN_MOTO", json.dumps({
        "conn_type": "aws", "login": "moto-key", "password": "moto-secret",
        "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }))
    return moto_server
