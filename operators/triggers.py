"""Triggers: the waiting part of a Cirrus task, run by Airflow's triggerer instead of a worker slot.

Both drivers (preprocessing, training) hold no data: they plan, fan out invocations and
poll (the executor's futures, the parameter server's status). A trigger runs the driver
on a thread of the triggerer, logs its progress, and turns its end into one event;
cancelling the trigger (the task is killed or times out) cancels what the driver started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cirrus_airflow.executor import ExecutorSettings, InvocationError
from cirrus_airflow.hooks import CirrusHook, ParameterServerHook
from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from cirrus_airflow.report import progress_line
from cirrus_airflow.storage import StorageError
from cirrus_airflow.training import TrainConfig, TrainingError, TrainingJob
from cirrus_airflow.tuning.search import Search, TuneConfig, executors_for


class _DriverTrigger(BaseTrigger):
    """A driver on a thread of the triggerer: ``_run(run, state)`` drives the run (attaching
    what cancels it to ``run``) and returns the event; ``_log_progress(state)`` logs its progress
    every ``poll_interval_s``. Subclasses name their extra kwargs in ``_extra``."""

    _extra: tuple[str, ...] = ()
    _cancelled_message = "trigger cancelled: stopping what the run started"

    def __init__(self, *, config: dict, settings: dict, aws_conn_id: str | None, poll_interval_s: float = 5.0,
                 **extra: Any) -> None:
        super().__init__()
        unknown = set(extra) - set(self._extra)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown arguments {sorted(unknown)}")
        self.config, self.settings, self.aws_conn_id = config, settings, aws_conn_id
        self.poll_interval_s = poll_interval_s
        for name in self._extra:
            setattr(self, name, extra.get(name))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        names = ("config", "settings", "aws_conn_id", "poll_interval_s", *self._extra)
        return f"{type(self).__module__}.{type(self).__qualname__}", {n: getattr(self, n) for n in names}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        run, state = _Cancellable(), self._new_state()
        job = asyncio.ensure_future(asyncio.to_thread(self._run, run, state))
        try:
            while not job.done():
                await asyncio.wait([job], timeout=self.poll_interval_s)
                self._log_progress(state)
        except asyncio.CancelledError:
            self.log.info("%s", self._cancelled_message)
            run.cancel()
            raise
        yield TriggerEvent(job.result())

    def _hook(self) -> CirrusHook:
        return CirrusHook(aws_conn_id=self.aws_conn_id, settings=ExecutorSettings(**self.settings))

    def _new_state(self) -> Any:
        return {}

    def _log_progress(self, state: Any) -> None:
        raise NotImplementedError

    def _run(self, run: _Cancellable, state: Any) -> dict:
        raise NotImplementedError


class PreprocessTrigger(_DriverTrigger):
    """Drives a preprocessing run's fan-out and waits for it.

    The driver's own work is light (plan splits, merge statistics, write the manifest);
    all reading and writing of data happens on the serverless workers, so the
    triggerer only holds threads that wait on invocations. The run is idempotent, so a
    triggerer that restarts and runs this again writes the same output. Cancelling the
    trigger (the task is killed or times out) cancels the invocations.
    """

    _cancelled_message = "trigger cancelled: cancelling the preprocessing invocations"

    @classmethod
    def for_run(cls, config: PreprocessConfig, settings: ExecutorSettings,
                aws_conn_id: str | None) -> PreprocessTrigger:
        return cls(config=_jsonable(asdict(config)), settings=asdict(settings), aws_conn_id=aws_conn_id)

    def _new_state(self) -> dict:
        return {"progress": {}, "logged": {}}  # stage -> (done, total), now and as last logged

    def _log_progress(self, state: dict) -> None:
        for stage, done_total in list(state["progress"].items()):
            if state["logged"].get(stage) != done_total:
                self.log.info("%s: %d/%d done", stage, *done_total)
                state["logged"][stage] = done_total

    def _run(self, run: _Cancellable, state: dict) -> dict:
        """The whole driver, on a thread; failures come back as an event, never as a triggerer crash."""
        config = PreprocessConfig(**self.config)
        hook = self._hook()
        try:
            with hook.get_executor() as executor:
                run.attach(executor)
                summary = run_preprocess(config, storage=hook.get_storage(), executor=executor,
                                         progress=lambda stage, done, total: state["progress"].__setitem__(
                                             stage, (done, total)))
            return {"status": "success", "summary": summary}
        except (PreprocessError, ValueError, StorageError) as exc:
            return {"status": "bad_input", "message": str(exc)}
        except InvocationError as exc:
            return {"status": "failed", "message": str(exc)}


class TrainTrigger(_DriverTrigger):
    """Drives a training run and waits for it: the workers' fan-out, their handovers and
    replacements, the live evaluations, all decided by polling futures and the parameter
    server's status. No worker slot is held while the model trains; the task log gets a
    progress line per poll interval. The run's own parameter server is started here, by the
    triggerer, and stopped when the run ends or the trigger is cancelled. A triggerer that
    restarts runs this again on the same output, which resumes the run from its checkpoint.
    """

    _extra = ("ps_conn_id",)
    _cancelled_message = "trigger cancelled: stopping the training workers and the parameter server"

    @classmethod
    def for_run(cls, config: TrainConfig, settings: ExecutorSettings, aws_conn_id: str | None,
                ps_conn_id: str | None) -> TrainTrigger:
        """The server's address and token stay in its connection, not in the trigger's kwargs."""
        doc = {k: v for k, v in asdict(config).items() if k not in ("ps_address", "ps_token")}
        return cls(config=_jsonable(doc), settings=asdict(settings), aws_conn_id=aws_conn_id, ps_conn_id=ps_conn_id,
                   poll_interval_s=10.0)

    def _new_state(self) -> list:
        return []  # the curve's points

    def _log_progress(self, points: list) -> None:
        if points:
            self.log.info("%s", progress_line(points[-1]))

    def _run(self, run: _Cancellable, points: list) -> dict:
        """The whole driver, on a thread; failures come back as an event, never as a triggerer crash."""
        address, token = ParameterServerHook(self.ps_conn_id).get_conn() if self.ps_conn_id else (None, None)
        config = TrainConfig(**self.config, ps_address=address, ps_token=token)
        hook = self._hook()
        try:
            with hook.get_executor() as executor:
                job = TrainingJob(config, storage=hook.get_storage(), executor=executor, progress=points.append)
                run.attach(job)
                return {"status": "success", "summary": job.run()}
        except (ValueError, StorageError) as exc:
            return {"status": "bad_input", "message": str(exc)}
        except (TrainingError, InvocationError) as exc:
            return {"status": "failed", "message": str(exc)}


class TuneTrigger(_DriverTrigger):
    """Runs a hyperparameter search from the triggerer: its trainings, their early stopping,
    its budgets; the task log gets the count of configurations by status per poll
    interval. Cancelling the trigger stops every configuration (each keeps its model)."""

    _cancelled_message = "trigger cancelled: stopping every configuration of the search"

    @classmethod
    def for_run(cls, config: TuneConfig, settings: ExecutorSettings, aws_conn_id: str | None) -> TuneTrigger:
        return cls(config=_jsonable(asdict(config)), settings=asdict(settings), aws_conn_id=aws_conn_id,
                   poll_interval_s=10.0)

    def _new_state(self) -> list:
        return []  # the search, once made

    def _log_progress(self, searches: list) -> None:
        if searches:
            states: dict[str, int] = {}
            for trial in searches[0].trials:
                state = trial.status or ("running" if trial.live else "waiting")
                states[state] = states.get(state, 0) + 1
            self.log.info("configurations: %s", states)

    def _run(self, run: _Cancellable, searches: list) -> dict:
        """The whole search, on a thread; failures come back as an event, never as a triggerer crash."""
        hook = self._hook()
        try:
            search = Search(TuneConfig(**self.config), storage=hook.get_storage(),
                            executors=executors_for(ExecutorSettings(**self.settings)))
            searches.append(search)
            run.attach(search)
            return {"status": "success", "results": search.run()}
        except (ValueError, StorageError) as exc:
            return {"status": "bad_input", "message": str(exc)}


class _Cancellable:
    """What a run on another thread stops with (its executor, its training job, its
    search), cancellable before it even exists: a cancel that comes first is applied the
    moment the target is attached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Any = None
        self._cancelled = False

    def attach(self, target: Any) -> None:
        with self._lock:
            self._target = target
            if self._cancelled:
                target.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._target is not None:
                self._target.cancel()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
