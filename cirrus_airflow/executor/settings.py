"""Which executor to build and how: the one place both Airflow and the CLI build one."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cirrus_airflow.executor.base import ServerlessExecutor
from cirrus_airflow.executor.function_config import FunctionConfig

EXECUTORS = ("local", "lambda")
EXECUTOR_ENV = "AIRFLOW__CIRRUS__EXECUTOR"


def default_executor_kind() -> str:
    """``local`` unless ``[cirrus] executor`` says otherwise (read here from its
    environment form, so the CLI and Airflow agree)."""
    return os.environ.get(EXECUTOR_ENV, "local")


@dataclass(frozen=True)
class ExecutorSettings:
    """Where invocations run: ``local`` (the embedded runtime) or ``lambda`` (a
    deployed function), and the function's limits. Invalid settings fail here, at
    construction, with Lambda's own limits in the message."""

    kind: str = "local"
    function_name: str = "cirrus-worker"
    memory_mb: int = 1024
    timeout_s: float = 900.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.kind!r}")
        self.function(environment={})

    def function(self, environment: dict[str, str]) -> FunctionConfig:
        return FunctionConfig(memory_mb=self.memory_mb, timeout_s=self.timeout_s,
                              concurrency=self.concurrency, environment=environment)

    def build(
        self,
        *,
        lambda_client: Callable[[Any], Any] | None = None,
        local_environment: dict[str, str] | None = None,
    ) -> ServerlessExecutor:
        """The executor; ``lambda_client(config)`` makes the boto3 client for ``lambda``
        (default: boto3's own credential chain), ``local_environment`` is what the local
        runtime's workers get (e.g. S3 credentials and endpoint)."""
        from cirrus_airflow.executor.lambda_executor import LambdaExecutor, lambda_client_config
        from cirrus_airflow.executor.local_executor import LocalLambdaExecutor

        if self.kind == "lambda":
            config = lambda_client_config(self.timeout_s, max_pool_connections=self.concurrency)
            if lambda_client is None:
                import boto3

                client = boto3.client("lambda", config=config)
            else:
                client = lambda_client(config)
            return LambdaExecutor(client, self.function_name, max_concurrency=self.concurrency,
                                  time_limit_s=self.timeout_s, memory_mb=self.memory_mb)
        return LocalLambdaExecutor(function_name=self.function_name,
                                   function=self.function(local_environment or {}),
                                   max_concurrency=self.concurrency)
