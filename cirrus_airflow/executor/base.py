"""The executor interface that the operators and the command line are written against, whatever runs the invocations.

A back end only has to invoke one event, synchronously or not; fanning out on a bounded
thread pool, keeping results in input order, stopping at the first failure and cancelling
are the same for all back ends and live here.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class InvocationError(RuntimeError):
    """An invocation whose handler failed, timed out or ran out of memory.

    ``error_type`` is what Lambda reports (``ValueError``, ``Sandbox.Timedout``,
    ``Runtime.OutOfMemory``, ...); ``log_tail`` is the end of the invocation's log when the
    back end returned it.
    """

    def __init__(self, error_type: str, error_message: str, *, request_id: str | None = None,
                 event_task: str | None = None, log_tail: str | None = None) -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.request_id = request_id
        self.event_task = event_task
        self.log_tail = log_tail
        what = f"task {event_task!r}" if event_task else "the invocation"
        request = f" (request {request_id})" if request_id else ""
        super().__init__(f"{what} failed on Lambda{request}: {error_type}: {error_message}")


class ServerlessExecutor(abc.ABC):
    """Invokes events on serverless workers; ``max_concurrency`` bounds how many run at once from here."""

    def __init__(self, *, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @abc.abstractmethod
    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """Run one event and wait for the handler's JSON result; raises ``InvocationError`` if it failed."""

    @abc.abstractmethod
    def invoke_async(self, event: dict[str, Any]) -> str:
        """Queue one event without waiting for it; returns the request id."""

    def submit(self, event: dict[str, Any]) -> Future[dict[str, Any]]:
        """``invoke(event)`` on a pool of ``max_concurrency`` threads."""
        with self._lock:
            self._check_usable()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="cirrus-invoke")
            try:
                return self._pool.submit(self.invoke, event)
            except RuntimeError:  # cancel() shut the pool down after the check above
                self._raise_if_cancelled()
                raise

    def map(self, events: Sequence[dict[str, Any]], *,
            progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Invoke every event; results come back in input order.

        ``progress(done, total)`` is called after each completion. The first failure cancels the
        events that have not started and is raised; those already running finish on their own
        (call ``cancel()`` to stop them where the back end can).
        """
        futures: list[Future[dict[str, Any]]] = []
        try:
            futures.extend(self.submit(event) for event in events)
            position = {future: index for index, future in enumerate(futures)}
            results: list[Any] = [None] * len(futures)
            for done, future in enumerate(as_completed(futures), start=1):
                results[position[future]] = future.result()
                if progress is not None:
                    progress(done, len(futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return results

    def cancel(self) -> None:
        """Cancel queued submissions and refuse new work: the ``on_kill`` path.

        It takes none of this executor's locks: Airflow calls ``on_kill`` from a signal handler,
        which may interrupt this very executor in the thread that holds one.
        """
        self._cancelled.set()
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            logger.info("cancelled the invocations still queued; no new ones will start")

    def close(self) -> None:
        """Wait for submitted invocations and release the threads; the executor cannot be used afterwards.

        After ``cancel()`` nothing is waited for: what still runs was told to stop, or cannot be.
        """
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not self._cancelled.is_set())

    def __enter__(self) -> ServerlessExecutor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """On an error, cancel what is still queued or running before closing: nothing should outlive the task."""
        if exc_type is not None:
            self.cancel()
        self.close()

    def _raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise CancelledError("the executor was cancelled; create a new one to invoke more events")

    def _check_usable(self) -> None:
        self._raise_if_cancelled()
        if self._closed:
            raise RuntimeError("the executor is closed; create a new one to invoke more events")
