"""What the local Lambda runtime reports per invocation (its REPORT lines), for benchmarks."""

from __future__ import annotations

import logging
import re

_MEMORY = re.compile(r"Max Memory Used: (\d+) MB")
_DURATION = re.compile(r"Billed Duration: (\d+) ms")


class LambdaReports(logging.Handler):
    """Collects peak memory and billed time of every invocation while installed."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.peak_mb = 0
        self.billed_ms = 0
        self.invocations = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        memory = _MEMORY.search(message)
        if memory:
            self.invocations += 1
            self.peak_mb = max(self.peak_mb, int(memory.group(1)))
            self.billed_ms += int(_DURATION.search(message).group(1))

    def __enter__(self) -> LambdaReports:
        runtime_log = logging.getLogger("cirrus_airflow.executor.local_runtime")
        self._saved_level = runtime_log.level
        runtime_log.setLevel(logging.DEBUG)
        runtime_log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        runtime_log = logging.getLogger("cirrus_airflow.executor.local_runtime")
        runtime_log.removeHandler(self)
        runtime_log.setLevel(self._saved_level)
