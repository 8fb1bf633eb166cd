"""An embedded stand-in for AWS Lambda: it serves the Invoke API on loopback and runs handlers in worker processes.

It keeps what the Cirrus workloads rely on: a process per concurrent invocation, warm
processes reused between invocations, the time limit (``Sandbox.Timedout``), the memory limit
(``Runtime.OutOfMemory``), reserved concurrency (429 for synchronous invocations, a queue for
asynchronous ones), the payload limits, the ``context`` object and the log tail. Because the
API is the real one, the code under test talks to it through an ordinary boto3 client.

The memory limit is enforced from /proc, so on Linux only: each running worker's resident
memory is sampled a few times a second, and its peak (VmHWM) is checked when it replies. It is
never done with RLIMIT_AS, which breaks numpy and pyarrow, whose address space is far larger
than their memory use. Asynchronous invocations are not retried (Lambda retries twice by default); a
failure is logged at ERROR level.

Once stopped (or cancelled) a runtime refuses every new invocation with 503 ServiceException;
that check and the registration of a running worker happen under one lock, so an invocation
that is just starting is either refused or killed, never missed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import site
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from cirrus_airflow.executor.function_config import ASYNC_PAYLOAD_LIMIT, SYNC_PAYLOAD_LIMIT, FunctionConfig
from cirrus_airflow.executor.invoke_api import InvokeApiServer, LambdaApiError
from cirrus_airflow.executor.worker_process import WorkerProcess

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
LATEST = "$LATEST"

_WATCH_INTERVAL_S = 0.1
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_KILL_MESSAGES = {
    "memory": "signal: killed",
    "cancelled": "signal: killed (the invocation was cancelled)",
    "shutdown": "signal: killed (the local Lambda runtime was stopped)",
}


@dataclass(frozen=True)
class InvocationResult:
    """What the Invoke API answers: the status, the payload, FunctionError and the whole invocation log."""

    request_id: str
    status: int
    payload: bytes = b""
    function_error: str | None = None
    log: str = ""


@dataclass
class _Watch:
    """What the watchdog enforces on a worker that runs (or starts for) an invocation."""

    deadline: float
    memory_mb: int


@dataclass(frozen=True)
class _Attempt:
    """How far one invocation got in its worker: the reply (None if the worker died) and its timings."""

    reply: dict[str, Any] | None
    duration_ms: float
    init_ms: float | None
    init_lines: list[str]


class _Function:
    """The runtime's state for one function: its slots, warm workers and queue of asynchronous events."""

    def __init__(self, name: str, config: FunctionConfig) -> None:
        self.name = name
        self.config = config
        self.arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
        self.slots = threading.BoundedSemaphore(config.concurrency)
        self.idle: list[WorkerProcess] = []
        self.events: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.event_threads: list[threading.Thread] = []
        self.log = logging.getLogger(f"{__name__}.{name}")


class LocalLambdaRuntime:
    """Serves ``functions`` on ``http://host:port`` (port 0 picks a free one) until ``stop()``."""

    def __init__(self, functions: dict[str, FunctionConfig], *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not functions:
            raise ValueError("the local Lambda runtime needs at least one function to serve")
        self._functions = {name: _Function(name, config) for name, config in functions.items()}
        self._address = (host, port)
        self._lock = threading.Lock()
        self._in_flight: dict[WorkerProcess, _Watch] = {}  # running workers, until their reply arrives
        self._stopping = threading.Event()
        self._server: InvokeApiServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the local Lambda runtime is not started; call start() first")
        return f"http://{self._address[0]}:{self._server.server_port}"

    def start(self) -> LocalLambdaRuntime:
        """Bind the port and start serving; returns self, for ``runtime = LocalLambdaRuntime(...).start()``."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("this local Lambda runtime was already started; create a new one")
        self._server = InvokeApiServer(self._address, self)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name="cirrus-local-lambda-http", daemon=True),
            threading.Thread(target=self._watch_workers, name="cirrus-local-lambda-watchdog", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        logger.info("local Lambda runtime serving %s on %s", ", ".join(self._functions), self.endpoint_url)
        if not os.path.exists("/proc/self/status"):
            logger.warning("memory sizes are not enforced here: the local runtime reads memory use from /proc")
        return self

    def stop(self) -> None:
        """Kill every worker, drop queued asynchronous events and shut the server; returns when all is gone."""
        self._shut_down("shutdown")

    def cancel(self) -> None:
        """Stop as ``stop()`` does, for ``on_kill``: the killed invocations report that they were cancelled.

        Safe to call more than once and from any thread; a second call returns at once.
        """
        self._shut_down("cancelled")

    def __enter__(self) -> LocalLambdaRuntime:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _shut_down(self, reason: str) -> None:
        """Refuse new work, kill what runs (first, so that it stops soonest), then end every thread."""
        if self._server is None or self._stopping.is_set():
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            running = list(self._in_flight)
            idle = [worker for function in self._functions.values() for worker in function.idle]
            for function in self._functions.values():
                function.idle.clear()
        for worker in running:
            worker.kill(reason)
        self._server.shutdown()
        for worker in idle:
            worker.close(reason)
        for function in self._functions.values():
            self._stop_event_threads(function)
        self._server.close_connections()
        self._server.server_close()
        for thread in self._threads:
            thread.join()
        logger.info("local Lambda runtime on %s stopped", self.endpoint_url)

    def invoke(self, function_name: str, payload: bytes, *, qualifier: str | None = None,
               invocation_type: str = "RequestResponse") -> InvocationResult:
        """The Invoke operation; raises ``LambdaApiError`` for what the API answers with an HTTP error."""
        if self._server is None:
            raise RuntimeError("the local Lambda runtime is not started; call start() first")
        function = self._resolve(function_name, qualifier)
        limit = ASYNC_PAYLOAD_LIMIT if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        if len(payload) > limit:
            raise LambdaApiError(413, "RequestTooLargeException",
                                 f"Request must be smaller than {limit} bytes for the Invoke operation")
        event_text = _event_text(payload)
        request_id = str(uuid.uuid4())
        if invocation_type == "DryRun":
            return InvocationResult(request_id, 204)
        if invocation_type == "Event":
            self._enqueue_event(function, event_text, request_id)
            return InvocationResult(request_id, 202)
        if invocation_type != "RequestResponse":
            raise LambdaApiError(400, "InvalidParameterValueException",
                                 f"InvocationType must be RequestResponse, Event or DryRun, got {invocation_type!r}")
        if not function.slots.acquire(blocking=False):
            raise LambdaApiError(429, "TooManyRequestsException", "Rate Exceeded.",
                                 reason="ReservedFunctionConcurrentInvocationLimitExceeded")
        try:
            return self._run(function, event_text, request_id)
        finally:
            function.slots.release()

    def _resolve(self, function_name: str, qualifier: str | None) -> _Function:
        name, path_qualifier = _split_function_name(function_name)
        if path_qualifier and qualifier and path_qualifier != qualifier:
            raise LambdaApiError(400, "InvalidParameterValueException",
                                 "The derived qualifier from the function name does not match the specified qualifier.")
        qualifier = path_qualifier or qualifier
        function = self._functions.get(name)
        if function is None or qualifier not in (None, LATEST):
            suffix = f":{qualifier}" if qualifier else ""
            raise LambdaApiError(404, "ResourceNotFoundException",
                                 f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}{suffix}")
        return function

    def _run(self, function: _Function, event_text: str, request_id: str) -> InvocationResult:
        """One invocation in a warm worker, or in a new one; the worker goes back to the pool only if healthy.

        Whatever happens after the worker is taken, it is released: a worker left registered
        would never be reaped.
        """
        worker, cold = self._take_worker(function)
        healthy = False
        try:
            function.log.debug("START RequestId: %s Version: %s", request_id, LATEST)
            attempt = self._attempt(worker, cold, function, event_text, request_id)
            outcome, notes = _outcome(worker, attempt.reply, request_id, function.config.timeout_s)
            healthy = outcome["type"] in ("result", "error")
            lines = [*attempt.init_lines, f"START RequestId: {request_id} Version: {LATEST}", *worker.take_log(),
                     *notes]
        finally:
            self._release_worker(function, worker, healthy=healthy)
        payload, function_error = _answer(outcome, request_id)
        report = _report_line(request_id, attempt.duration_ms, function.config.memory_mb, worker.peak_rss_mb,
                              attempt.init_ms)
        function.log.debug("END RequestId: %s", request_id)
        function.log.debug("%s", report)
        lines += [f"END RequestId: {request_id}", report]
        return InvocationResult(request_id, 200, payload, function_error, "\n".join(lines) + "\n")

    def _attempt(self, worker: WorkerProcess, cold: bool, function: _Function, event_text: str,
                 request_id: str) -> _Attempt:
        """Start the worker if it is new, run the event in it and check its memory peak."""
        started = time.monotonic()
        reply, init_ms, init_lines = None, None, []
        ready = not cold
        if cold:
            first = worker.wait_ready()
            init_lines = worker.take_log()
            ready = first is not None and first["type"] == "ready"
            init_ms = (time.monotonic() - worker.started) * 1000 if ready else None
            reply = None if ready else first
        if ready and worker.kill_reason is None:
            started = self._start_clock(worker, function)
            reply = worker.run({
                "request_id": request_id,
                "payload": event_text,
                "deadline_ms": (time.time() + function.config.timeout_s) * 1000,
                "invoked_function_arn": function.arn,
            })
            self._unwatch(worker)
        duration_ms = (time.monotonic() - started) * 1000
        worker.sample_memory()
        if reply is not None and worker.peak_rss_mb > function.config.memory_mb:
            worker.kill("memory")
        return _Attempt(reply, duration_ms, init_ms, init_lines)

    def _take_worker(self, function: _Function) -> tuple[WorkerProcess, bool]:
        """A warm worker if one is idle, else a new one (a cold start); either is watched from now on."""
        with self._lock:
            if self._stopping.is_set():
                raise LambdaApiError(503, "ServiceException", "the local Lambda runtime is stopping")
            while function.idle:
                worker = function.idle.pop()
                if worker.alive():
                    self._in_flight[worker] = _Watch(math.inf, function.config.memory_mb)
                    return worker, False
                worker.close("died while idle")
            worker = WorkerProcess(function.config.handler, self._worker_environment(function), function.log)
            deadline = time.monotonic() + function.config.timeout_s
            self._in_flight[worker] = _Watch(deadline, function.config.memory_mb)
            return worker, True

    def _start_clock(self, worker: WorkerProcess, function: _Function) -> float:
        """Start the invocation's time limit (the init phase of a cold start has its own)."""
        started = time.monotonic()
        with self._lock:
            self._in_flight[worker].deadline = started + function.config.timeout_s
        return started

    def _unwatch(self, worker: WorkerProcess) -> None:
        """The reply is in (or the worker is dead): from now on nothing may kill the worker for this invocation."""
        with self._lock:
            self._in_flight.pop(worker, None)

    def _release_worker(self, function: _Function, worker: WorkerProcess, *, healthy: bool) -> None:
        """Keep a healthy worker warm; retire one that failed, was killed (even just now) or outlives the runtime."""
        with self._lock:
            self._in_flight.pop(worker, None)
            keep = healthy and worker.kill_reason is None and worker.alive() and not self._stopping.is_set()
            if keep:
                function.idle.append(worker)
        if not keep:
            worker.close("retired")

    def _worker_environment(self, function: _Function) -> dict[str, str]:
        """The parent's environment, Lambda's variables, then the function's own, which win."""
        config = function.config
        env = dict(os.environ)
        region = _region(config.environment)
        env.update({
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": LATEST,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": f"{config.timeout_s:g}",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{datetime.now(timezone.utc):%Y/%m/%d}/[{LATEST}]{uuid.uuid4().hex}",
            "_HANDLER": config.handler,
            "AWS_ENDPOINT_URL_LAMBDA": self.endpoint_url,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(config.environment)
        pythonpath = _with_package_root(env.get("PYTHONPATH"))
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        return env

    def _watch_workers(self) -> None:
        """Kill workers past their deadline or over their memory size, a few times a second."""
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                watched = list(self._in_flight.items())
            for worker, watch in watched:
                reason = _breach(worker, watch, now)
                if reason is not None:
                    self._kill_if_watched(worker, watch, reason)

    def _kill_if_watched(self, worker: WorkerProcess, watch: _Watch, reason: str) -> None:
        """Kill unless the worker replied since it was checked: a reply that is in must not become a failure."""
        with self._lock:
            if self._in_flight.get(worker) is watch:
                worker.kill(reason)

    def _enqueue_event(self, function: _Function, event_text: str, request_id: str) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise LambdaApiError(503, "ServiceException", "the local Lambda runtime is stopping")
            if not function.event_threads:
                function.event_threads = [
                    threading.Thread(target=self._serve_events, args=(function,),
                                     name=f"cirrus-local-lambda-events-{function.name}-{index}", daemon=True)
                    for index in range(function.config.concurrency)
                ]
                for thread in function.event_threads:
                    thread.start()
            function.events.put((event_text, request_id))

    def _serve_events(self, function: _Function) -> None:
        """Run queued asynchronous events as slots free up, like Lambda's internal event queue.

        Once the runtime stops, ``_run`` refuses each event still queued, and it is dropped.
        """
        while (item := function.events.get()) is not None:
            event_text, request_id = item
            with function.slots:
                try:
                    result = self._run(function, event_text, request_id)
                except LambdaApiError as refused:
                    logger.warning("dropped asynchronous invocation %s of %s: %s", request_id, function.name,
                                   refused.message)
                    continue
                except Exception:  # this thread must survive to run the next events
                    logger.exception("asynchronous invocation %s of %s could not run", request_id, function.name)
                    continue
            if result.function_error:
                logger.error("asynchronous invocation %s of %s failed: %s\n%s", request_id, function.name,
                             result.payload.decode("utf-8", "replace"), result.log)

    def _stop_event_threads(self, function: _Function) -> None:
        """One end marker per thread, behind the queued events, which the stopped runtime drops."""
        for _ in function.event_threads:
            function.events.put(None)
        for thread in function.event_threads:
            thread.join()


def _split_function_name(function_name: str) -> tuple[str, str | None]:
    """Name and qualifier from a name, ``name:qualifier`` or a function ARN, as the Invoke API accepts."""
    if function_name.startswith("arn:"):
        parts = function_name.split(":")
        if len(parts) not in (7, 8) or parts[5] != "function":
            raise LambdaApiError(400, "InvalidParameterValueException",
                                 f"{function_name!r} is not a Lambda function ARN")
        return parts[6], parts[7] if len(parts) == 8 else None
    name, _, qualifier = function_name.partition(":")
    return name, qualifier or None


def _event_text(payload: bytes) -> str:
    """The event as JSON text; an empty payload is the empty event, as in Lambda."""
    if not payload.strip():
        return "{}"
    try:
        text = payload.decode("utf-8")
        json.loads(text)
    except ValueError as error:
        raise LambdaApiError(400, "InvalidRequestContentException",
                             f"Could not parse request body into json: {error}") from None
    return text


def _region(function_environment: dict[str, str]) -> str:
    """The function's region if it names one, else the parent's, else us-east-1.

    Workers get it in both AWS_REGION and AWS_DEFAULT_REGION, so that every SDK in them agrees.
    """
    for settings in (function_environment, os.environ):
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            if settings.get(name):
                return settings[name]
    return REGION


def _with_package_root(pythonpath: str | None) -> str | None:
    """Workers run ``-m cirrus_airflow.executor.local_worker``: let them find this package even when the
    function's PYTHONPATH replaces the parent's or the package runs from a source tree."""
    site_dirs = {*site.getsitepackages(), site.getusersitepackages()}
    entries = [entry for entry in (pythonpath or "").split(os.pathsep) if entry]
    if _PACKAGE_ROOT not in site_dirs and _PACKAGE_ROOT not in entries:
        entries.append(_PACKAGE_ROOT)
    return os.pathsep.join(entries) or None


def _breach(worker: WorkerProcess, watch: _Watch, now: float) -> str | None:
    """Why the watchdog must kill a running worker (``timeout`` or ``memory``), if it must."""
    if now >= watch.deadline:
        return "timeout"
    rss_mb = worker.sample_memory()
    if rss_mb is not None and rss_mb > watch.memory_mb:
        return "memory"
    return None


def _outcome(worker: WorkerProcess, reply: dict[str, Any] | None, request_id: str,
             timeout_s: float) -> tuple[dict[str, Any], list[str]]:
    """The worker's reply, or the error Lambda reports when the sandbox failed (with the log lines that go with it).

    A reply that arrived wins over a kill that came after it (a deadline or a ``stop()`` that
    raced with the reply): the handler did finish. Only the memory peak, measured on the
    reply, turns a reply into a failure.
    """
    if reply is not None and worker.kill_reason != "memory":
        return reply, []
    if worker.kill_reason == "timeout":
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"
        return {"type": "sandbox_error", "errorType": "Sandbox.Timedout", "errorMessage": message}, [
            f"{stamp} {request_id} Task timed out after {timeout_s:.2f} seconds"]
    error_type = "Runtime.OutOfMemory" if worker.kill_reason == "memory" else "Runtime.ExitError"
    how = _KILL_MESSAGES.get(worker.kill_reason or "") or worker.exit_description()
    message = f"RequestId: {request_id} Error: Runtime exited with error: {how}"
    return {"type": "sandbox_error", "errorType": error_type, "errorMessage": message}, [message, error_type]


def _answer(outcome: dict[str, Any], request_id: str) -> tuple[bytes, str | None]:
    """The Invoke payload and FunctionError header for an outcome, shaped as Lambda shapes them."""
    if outcome["type"] == "sandbox_error":
        return json.dumps({key: outcome[key] for key in ("errorType", "errorMessage")}).encode(), "Unhandled"
    if outcome["type"] in ("error", "init_error"):
        error = {key: outcome[key] for key in ("errorMessage", "errorType", "stackTrace")}
        return json.dumps({**error, "requestId": request_id}).encode(), "Unhandled"
    payload = outcome["payload"].encode()
    if len(payload) > SYNC_PAYLOAD_LIMIT:
        message = (f"Response payload size ({len(payload)} bytes) exceeded maximum allowed payload size "
                   f"({SYNC_PAYLOAD_LIMIT} bytes).")
        return json.dumps({"errorType": "Function.ResponseSizeTooLarge", "errorMessage": message}).encode(), "Unhandled"
    return payload, None


def _report_line(request_id: str, duration_ms: float, memory_mb: int, peak_rss_mb: float,
                 init_ms: float | None) -> str:
    report = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
              f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {memory_mb} MB\t"
              f"Max Memory Used: {math.ceil(peak_rss_mb)} MB")
    if init_ms is not None:
        report += f"\tInit Duration: {init_ms:.2f} ms"
    return report
