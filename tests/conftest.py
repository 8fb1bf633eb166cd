"""Shared test set-up: Airflow must see a throw-away home before it is first imported."""

import os
import tempfile
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="cirrus-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault(
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
)


import time as _time
from collections.abc import Iterator
from typing import Any

import pytest

from cirrus_airflow.executor import InvocationError, ServerlessExecutor


class _Context:
    """A Lambda context for handlers called in-process: a real countdown."""

    def __init__(self, timeout_s: float) -> None:
        self._deadline = _time.monotonic() + timeout_s
        self.function_name = "inline"
        self.aws_request_id = "inline"
        self.memory_limit_in_mb = 1024

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - _time.monotonic()) * 1000))


class InlineExecutor(ServerlessExecutor):
    """Runs the real handler in this process: for testing the drivers' logic quickly.
    End-to-end tests use the local Lambda runtime instead."""

    def __init__(self, *, max_concurrency: int = 2, timeout_s: float = 900.0) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.timeout_s = timeout_s
        self.events: list[dict] = []

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        from lambda_pkg.handler import handler

        self._raise_if_cancelled()
        self.events.append(event)
        try:
            return handler(event, _Context(self.timeout_s))
        except Exception as exc:  # noqa: BLE001 - reported the way Lambda reports it
            raise InvocationError(type(exc).__name__, str(exc), event_task=event.get("task")) from exc

    def invoke_async(self, event: dict[str, Any]) -> str:
        self.submit(event)
        return "inline"


@pytest.fixture
def inline_executor():
    with InlineExecutor() as executor:
        yield executor


@pytest.fixture
def ratings_shards(tmp_path, inline_executor):
    """Makes ratings shards from generated ratings (a hidden low-rank model): small, quick
    inputs for matrix factorisation, training runs and searches."""
    from cirrus_airflow.datasets import write_synthetic_ratings
    from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
    from cirrus_airflow.storage import Storage

    def make(*, users: int = 100, items: int = 200, rows: int = 6000, seed: int = 1) -> Path:
        raw, out = tmp_path / f"ratings-{seed}.csv", tmp_path / f"shards-{seed}"
        write_synthetic_ratings(Storage(), str(raw), users=users, items=items, rows=rows, seed=seed)
        run_preprocess(PreprocessConfig(inputs=[str(raw)], output=str(out), format="ratings", workers=2,
                                        row_group_rows=500, shard_rows=max(500, rows // 4)),
                       storage=Storage(), executor=inline_executor)
        return out

    return make


@pytest.fixture
def evaluating_executor():
    """Two workers and, beside them, the live evaluator of a training run."""
    with InlineExecutor(max_concurrency=3) as executor:
        yield executor


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (its endpoint URL), with every AWS setting cleared from the
    environment, so each test says itself how its code reaches S3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    yield f"http://{host}:{port}"
    server.stop()
