"""What every Cirrus operator shares: where the work runs, and how it is stopped."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from airflow.sdk import BaseOperator

from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.hooks import CirrusHook, configured_executor_kind
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
        self.serverless_executor = serverless_executor
        self.aws_conn_id = aws_conn_id
        self.function_name = function_name
        self.worker_memory_mb = worker_memory_mb
        self.worker_timeout_s = worker_timeout_s
        self.max_concurrency = max_concurrency
        self._settings(serverless_executor or "local")
        self._cancel: Callable[[], None] | None = None

    def _settings(self, kind: str) -> ExecutorSettings:
        return ExecutorSettings(kind=kind, function_name=self.function_name, memory_mb=self.worker_memory_mb,
                                timeout_s=self.worker_timeout_s, concurrency=self.max_concurrency)

    @property
    def hook(self) -> CirrusHook:
        kind = self.serverless_executor or configured_executor_kind()
        return CirrusHook(aws_conn_id=self.aws_conn_id, settings=self._settings(kind))

    @staticmethod
    def _trigger_result(event: dict, key: str, *, what: str, bad_input: type[Exception] = ValueError,
                        failed: type[Exception] = RuntimeError) -> Any:
        """What a trigger's event carries under ``key``, or the error it reports: bad input
        (the user's to fix) or a failed run."""
        status = event.get("status")
        if status == "bad_input":
            raise bad_input(event["message"])
        if status != "success":
            raise failed(f"{what} failed: {event.get('message', event)}")
        return event[key]

    @contextlib.contextmanager
    def _cancellable(self, cancel: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``on_kill`` stops its work with ``cancel``."""
        self._cancel = cancel
        try:
            yield
        finally:
            self._cancel = None

    def on_kill(self) -> None:
        """Stop the work in flight, from a thread of its own.

        Airflow calls this from the SIGTERM handler, on the thread that runs
        ``execute``; stopping there could wait on a lock that thread holds. The
        task's own loop notices the cancel and cleans up before it returns.
        """
        cancel = self._cancel
        if cancel is not None:
            self.log.info("stopping the serverless work this task started")
            threading.Thread(target=cancel, name="cirrus-on-kill", daemon=True).start()
