"""The embedded back end: the Lambda executor, pointed at a local Lambda runtime it starts and stops itself.

It goes through a real boto3 client and the Invoke API, so the code path is the one used on
AWS; only the endpoint and the (dummy) credentials differ.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import boto3
from botocore.config import Config

from cirrus_airflow.executor.function_config import FunctionConfig
from cirrus_airflow.executor.lambda_executor import LambdaExecutor, lambda_client_config
from cirrus_airflow.executor.local_runtime import REGION, LocalLambdaRuntime

logger = logging.getLogger(__name__)

_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def local_lambda_client(endpoint_url: str, *, timeout_s: float, max_pool_connections: int = 10) -> Any:
    """A boto3 Lambda client for a local runtime: dummy credentials, no proxy (loopback must not leave the host)."""
    session = boto3.session.Session(region_name=REGION, **_LOCAL_CREDENTIALS)
    config = lambda_client_config(timeout_s, max_pool_connections=max_pool_connections).merge(Config(proxies={}))
    return session.client("lambda", endpoint_url=endpoint_url, config=config)


class LocalLambdaExecutor(LambdaExecutor):
    """Runs events on a ``LocalLambdaRuntime`` that serves one function, started on first use, stopped by ``close()``.

    ``max_concurrency`` defaults to the function's reserved concurrency. ``cancel()`` stops the
    runtime at once, which AWS cannot do: running invocations are killed, queued asynchronous
    events dropped, and invocations that are only starting refused. A cancelled executor is
    never used again, so nothing is lost by stopping the whole runtime.
    """

    def __init__(self, *, function_name: str = "cirrus-worker", function: FunctionConfig | None = None,
                 max_concurrency: int | None = None) -> None:
        self.function = function or FunctionConfig()
        super().__init__(None, function_name, max_concurrency=max_concurrency or self.function.concurrency,
                         time_limit_s=self.function.timeout_s, memory_mb=self.function.memory_mb)
        self._runtime: LocalLambdaRuntime | None = None
        self._start_lock = threading.Lock()

    def _lambda_client(self) -> Any:
        with self._start_lock:
            if self._client is None:
                self._check_usable()
                self._runtime = runtime = LocalLambdaRuntime({self.function_name: self.function}).start()
                if self._cancelled.is_set():  # cancel() may have looked for a runtime just before it existed
                    runtime.cancel()
                self._client = local_lambda_client(
                    runtime.endpoint_url, timeout_s=self.function.timeout_s, max_pool_connections=self.max_concurrency
                )
            return self._client

    def cancel(self) -> None:
        """Refuse new work and stop the runtime; lock-free, like the base class, for signal handlers."""
        super().cancel()
        runtime = self._runtime
        if runtime is not None:
            runtime.cancel()
            logger.info("stopped the local Lambda runtime of %s: its invocations were cancelled", self.function_name)

    def close(self) -> None:
        super().close()
        with self._start_lock:
            client, runtime = self._client, self._runtime
            self._client = self._runtime = None
        if client is not None:
            client.close()
        if runtime is not None:
            runtime.stop()
