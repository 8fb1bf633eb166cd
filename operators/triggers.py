"""Triggers: the waiting part of a Cirrus task, run by Airflow's triggerer instead of a worker slot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cirrus_airflow.executor import ExecutorSettings, InvocationError, ServerlessExecutor
from cirrus_airflow.hooks import CirrusHook
from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from cirrus_airflow.storage import StorageError


class PreprocessTrigger(BaseTrigger):
    """Drives a preprocessing run's fan-out and waits for it.

    The driver's own work is light (plan splits, merge statistics, write the manifest);
    all reading and writing of data happens on the serverless workers, so the
    triggerer only holds threads that wait on invocations. The run is idempotent, so a
    triggerer that restarts and runs this again writes the same output. Cancelling the
    trigger (the task is killed or times out) cancels the invocations.
    """

    def __init__(self, *, config: dict, settings: dict, aws_conn_id: str | None, poll_interval_s: float = 5.0) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.aws_conn_id = aws_conn_id
        self.poll_interval_s = poll_interval_s

    @classmethod
    def for_run(cls, config: PreprocessConfig, settings: ExecutorSettings, aws_conn_id: str | None) -> PreprocessTrigger:
        return cls(config=_jsonable(asdict(config)), settings=asdict(settings), aws_conn_id=aws_conn_id)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"config": self.config, "settings": self.settings, "aws_conn_id": self.aws_conn_id,
             "poll_interval_s": self.poll_interval_s},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        run = _Cancellable()
        progress: dict[str, tuple[int, int]] = {}
        logged: dict[str, tuple[int, int]] = {}
        job = asyncio.ensure_future(asyncio.to_thread(self._run, run, progress))
        try:
            while not job.done():
                await asyncio.wait([job], timeout=self.poll_interval_s)
                for stage, state in list(progress.items()):
                    if logged.get(stage) != state:
                        self.log.info("%s: %d/%d done", stage, *state)
                        logged[stage] = state
        except asyncio.CancelledError:
            self.log.info("trigger cancelled: cancelling the preprocessing invocations")
            run.cancel()
            raise
        yield TriggerEvent(job.result())

    def _run(self, run: _Cancellable, progress: dict) -> dict:
        """The whole driver, on a thread; failures come back as an event, never as a triggerer crash."""
        config = PreprocessConfig(**self.config)
        hook = CirrusHook(aws_conn_id=self.aws_conn_id, settings=ExecutorSettings(**self.settings))
        try:
            with hook.get_executor() as executor:
                run.attach(executor)
                summary = run_preprocess(config, storage=hook.get_storage(), executor=executor,
                                         progress=lambda stage, done, total: progress.__setitem__(stage, (done, total)))
            return {"status": "success", "summary": summary}
        except (PreprocessError, ValueError, StorageError) as exc:
            return {"status": "bad_input", "message": str(exc)}
        except InvocationError as exc:
            return {"status": "failed", "message": str(exc)}


class _Cancellable:
    """The executor of a run on another thread, cancellable before it even exists: a cancel
    that comes first is applied the moment the executor is attached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ServerlessExecutor | None = None
        self._cancelled = False

    def attach(self, executor: ServerlessExecutor) -> None:
        with self._lock:
            self._executor = executor
            if self._cancelled:
                executor.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._executor is not None:
                self._executor.cancel()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
