"""Run Cirrus tasks as Lambda invocations: one executor interface, an AWS back end and an embedded local runtime.

Nothing here imports Airflow. The names are loaded on first use (PEP 562) because every local
worker process imports this package on its way to ``local_worker``: importing boto3 there
would add about 0.3 s and 25 MB to each cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "InvocationError": "base",
    "ServerlessExecutor": "base",
    "FunctionConfig": "function_config",
    "InvocationThrottledError": "lambda_executor",
    "LambdaExecutor": "lambda_executor",
    "lambda_client_config": "lambda_executor",
    "LocalLambdaExecutor": "local_executor",
    "local_lambda_client": "local_executor",
    "LocalLambdaRuntime": "local_runtime",
    "ExecutorSettings": "settings",
    "default_executor_kind": "settings",
}

__all__ = [
    "FunctionConfig",
    "InvocationError",
    "InvocationThrottledError",
    "LambdaExecutor",
    "LocalLambdaExecutor",
    "LocalLambdaRuntime",
    "ServerlessExecutor",
    "lambda_client_config",
    "local_lambda_client",
]

if TYPE_CHECKING:
    from cirrus_airflow.executor.base import InvocationError, ServerlessExecutor
    from cirrus_airflow.executor.function_config import FunctionConfig
    from cirrus_airflow.executor.lambda_executor import (
        InvocationThrottledError,
        LambdaExecutor,
        lambda_client_config,
    )
    from cirrus_airflow.executor.local_executor import LocalLambdaExecutor, local_lambda_client
    from cirrus_airflow.executor.local_runtime import LocalLambdaRuntime
    from cirrus_airflow.executor.settings import ExecutorSettings, default_executor_kind


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
