"""What every Cirrus operator shares: where the work runs, and how it is stopped."""

from __future__ import annotations

import threading
from typing import Any

from airflow.sdk import BaseOperator

from cirrus_airflow.hooks import CirrusHook
from cirrus_airflow.links import CirrusOutputLink


class CirrusBaseOperator(BaseOperator):
    """Base for operators that fan work out over a serverless executor.

    :param serverless_executor: ``local`` (embedded Lambda runtime) or ``lambda`` (a
        deployed function); default from ``[cirrus] executor``, else ``local``. (Not
        ``executor``: that name is Airflow's own, the executor that runs the task.)
    :param aws_conn_id: the Airflow AWS connection for S3 and Lambda.
    :param function_name: the deployed Lambda function (``lambda`` executor).
    :param worker_memory_mb: memory size of each worker (the local runtime enforces it).
    :param worker_timeout_s: time limit of one invocation.
    :param max_concurrency: invocations in flight at once.
    """

    operator_extra_links = (CirrusOutputLink(),)
    ui_color = "#cde4ff"

    def __init__(
        self,
        *,
        serverless_executor: str | None = None,
        aws_conn_id: str | None = "aws_default",
        function_name: str = "cirrus-worker",
        worker_memory_mb: int = 1024,
        worker_timeout_s: float = 900.0,
        max_concurrency: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if worker_memory_mb < 128:
            raise ValueError(f"worker_memory_mb must be at least 128 (Lambda's minimum), got {worker_memory_mb}")
        if not 1 <= worker_timeout_s <= 900:
            raise ValueError(f"worker_timeout_s must be between 1 and 900 seconds (Lambda's limit), got {worker_timeout_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.serverless_executor = serverless_executor
        self.aws_conn_id = aws_conn_id
        self.function_name = function_name
        self.worker_memory_mb = worker_memory_mb
        self.worker_timeout_s = worker_timeout_s
        self.max_concurrency = max_concurrency
        self._cancel_lock = threading.Lock()
        self._cancel: Any = None

    @property
    def hook(self) -> CirrusHook:
        return CirrusHook(
            aws_conn_id=self.aws_conn_id,
            executor=self.serverless_executor,
            function_name=self.function_name,
            worker_memory_mb=self.worker_memory_mb,
            worker_timeout_s=self.worker_timeout_s,
            max_concurrency=self.max_concurrency,
        )

    def _cancellable(self, cancel: Any) -> None:
        """Remember how to stop the work in flight (``None`` once it is over)."""
        with self._cancel_lock:
            self._cancel = cancel

    def on_kill(self) -> None:
        with self._cancel_lock:
            cancel = self._cancel
        if cancel is not None:
            self.log.info("stopping the serverless work this task started")
            cancel()
