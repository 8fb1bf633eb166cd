"""The settings of one function served by the local Lambda runtime, checked against Lambda's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 10240
MAX_TIMEOUT_S = 900.0
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
"""Largest request or response of a synchronous invocation, in bytes."""
ASYNC_PAYLOAD_LIMIT = 256 * 1024
"""Largest event of an asynchronous invocation, in bytes."""


@dataclass(frozen=True)
class FunctionConfig:
    """What Lambda would hold in a function's configuration.

    ``concurrency`` is the reserved concurrency: synchronous invocations beyond it are refused
    with 429 TooManyRequestsException, asynchronous ones wait in a queue. ``environment`` is
    added to the worker processes' environment (credentials, ``AWS_ENDPOINT_URL_S3``,
    ``PYTHONPATH`` for the handler's code, ...).
    """

    handler: str = "lambda_pkg.handler.handler"
    memory_mb: int = 1024
    timeout_s: float = 900.0
    concurrency: int = 4
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, _, function = self.handler.rpartition(".")
        if not module or not function:
            raise ValueError(
                f"handler must be 'module.function' (e.g. 'lambda_pkg.handler.handler'), got {self.handler!r}"
            )
        if not MIN_MEMORY_MB <= self.memory_mb <= MAX_MEMORY_MB:
            raise ValueError(
                f"memory_mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} as in Lambda, got {self.memory_mb}"
            )
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] seconds as in Lambda, got {self.timeout_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        for key, value in self.environment.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"environment variables must be strings, as in Lambda; {key!r} is set to {value!r}"
                )
