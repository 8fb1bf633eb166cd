"""The Lambda executors: LocalLambdaExecutor end to end, LambdaExecutor's retries against the runtime and a stub."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import socket
import threading
import time
from concurrent.futures import CancelledError
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from cirrus_airflow.executor import (
    InvocationError,
    InvocationThrottledError,
    LambdaExecutor,
    LocalLambdaExecutor,
    ServerlessExecutor,
    lambda_client_config,
    local_lambda_client,
    local_runtime,
)
from cirrus_airflow.executor.lambda_executor import full_jitter_delay


@pytest.fixture
def local_executor(function_config, wait_for):
    """``local_executor("echo", timeout_s=1, max_concurrency=2)``: a LocalLambdaExecutor closed after the test."""
    executors = []

    def make(handler, *, max_concurrency=None, **settings):
        executor = LocalLambdaExecutor(function_name=handler, function=function_config(handler, **settings),
                                       max_concurrency=max_concurrency)
        executors.append(executor)
        return executor

    threads_before = set(threading.enumerate())
    yield make
    for executor in executors:
        executor.close()
    # after cancel(), close() does not wait: the invocation threads end on their own, soon
    wait_for(lambda: not set(threading.enumerate()) - threads_before, what="the executors' threads to end")


def streaming(payload: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(payload), len(payload))


@pytest.fixture
def stubbed_client():
    client = boto3.session.Session(aws_access_key_id="stub", aws_secret_access_key="stub").client(
        "lambda", region_name="us-east-1", config=lambda_client_config(60))
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_local_executor_starts_its_runtime_on_first_use_and_stops_it_on_close(function_config, process_exists):
    executor = LocalLambdaExecutor(function_name="echo", function=function_config("echo"))
    assert executor.max_concurrency == 4

    result = executor.invoke({"task": "noop", "n": 1})
    executor.close()

    assert result["event"] == {"task": "noop", "n": 1}
    assert result["context"]["function_name"] == "echo"
    assert not process_exists(result["pid"])
    endpoint = urlsplit(result["env"]["AWS_ENDPOINT_URL_LAMBDA"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((endpoint.hostname, endpoint.port), timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        executor.invoke({})


def test_handler_failure_raises_invocation_error(local_executor):
    executor = local_executor("fail")

    with pytest.raises(InvocationError) as failure:
        executor.invoke({"task": "preprocess.stats", "x": 3})

    error = failure.value
    assert error.error_type == "ValueError"
    assert error.error_message == "cannot use x=3"
    assert error.event_task == "preprocess.stats"
    assert error.request_id
    assert "[ERROR] ValueError: cannot use x=3" in error.log_tail
    assert "task 'preprocess.stats' failed on Lambda" in str(error)
    assert "ValueError: cannot use x=3" in str(error)


def test_timeout_and_memory_limit_raise_invocation_errors(local_executor):
    slow = local_executor("sleep", timeout_s=1)
    greedy = local_executor("allocate", memory_mb=128)
    started = time.monotonic()

    with pytest.raises(InvocationError) as timed_out:
        slow.invoke({"task": "train.worker", "seconds": 60})
    with pytest.raises(InvocationError) as out_of_memory:
        greedy.invoke({"mb": 400, "hold_s": 30})

    assert time.monotonic() - started < 20
    assert timed_out.value.error_type == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in timed_out.value.error_message
    assert out_of_memory.value.error_type == "Runtime.OutOfMemory"
    assert slow.invoke({"seconds": 0})["slept"] == 0


def test_map_returns_results_in_input_order_and_reports_progress(local_executor):
    executor = local_executor("sleep", max_concurrency=4)
    rng = random.Random(7)
    events = [{"seconds": rng.choice([0.0, 0.05, 0.15]), "index": index} for index in range(12)]
    progress = []

    results = executor.map(events, progress=lambda done, total: progress.append((done, total)))

    assert [result["slept"] for result in results] == [event["seconds"] for event in events]
    assert progress == [(done, 12) for done in range(1, 13)]
    assert len({result["pid"] for result in results}) <= 4


def test_map_stops_at_the_first_failure(local_executor, tmp_path):
    touch = local_executor("touch", max_concurrency=1)
    events = [{"path": "/nonexistent-dir/cannot-write"}] + [{"path": str(tmp_path / f"{i}")} for i in range(8)]

    with pytest.raises(InvocationError) as failure:
        touch.map(events)
    touch.close()

    assert failure.value.error_type in ("FileNotFoundError", "PermissionError")
    assert len(list(tmp_path.iterdir())) < 8


def test_submit_runs_on_the_pool(local_executor):
    executor = local_executor("echo", max_concurrency=2)

    futures = [executor.submit({"n": n}) for n in range(5)]

    assert [future.result(timeout=30)["event"]["n"] for future in futures] == list(range(5))


def test_invoke_async_runs_the_event(local_executor, tmp_path, wait_for):
    executor = local_executor("touch")
    target = tmp_path / "touched.json"

    request_id = executor.invoke_async({"path": str(target)})

    wait_for(target.exists, what="the asynchronous invocation")
    assert json.loads(target.read_text()) == {"request_id": request_id}


def test_cancel_kills_running_invocations_and_drops_queued_ones(local_executor, tmp_path, read_pid, process_exists):
    executor = local_executor("sleep", max_concurrency=1)
    running = executor.submit({"task": "train.worker", "seconds": 60, "pid_file": str(tmp_path / "pid")})
    queued = executor.submit({"seconds": 0, "pid_file": str(tmp_path / "never")})
    pid = read_pid(tmp_path / "pid")
    started = time.monotonic()

    executor.cancel()

    with pytest.raises(InvocationError) as killed:
        running.result(timeout=10)
    assert time.monotonic() - started < 10
    assert killed.value.error_type == "Runtime.ExitError"
    assert "cancelled" in killed.value.error_message
    assert queued.cancelled()
    assert not process_exists(pid)
    assert not (tmp_path / "never").exists()
    with pytest.raises(CancelledError):
        executor.submit({"seconds": 0})


def test_cancel_stops_an_invocation_that_is_only_starting(local_executor, tmp_path, monkeypatch):
    """The request has reached the runtime, but no worker runs it yet: cancel() must still stop it."""
    reached = threading.Event()
    take_worker = local_runtime.LocalLambdaRuntime._take_worker

    def take_worker_after_cancel(runtime: local_runtime.LocalLambdaRuntime, function: Any) -> Any:
        reached.set()
        give_up = time.monotonic() + 10
        while not runtime._stopping.is_set() and time.monotonic() < give_up:
            time.sleep(0.01)
        return take_worker(runtime, function)

    monkeypatch.setattr(local_runtime.LocalLambdaRuntime, "_take_worker", take_worker_after_cancel)
    executor = local_executor("sleep")
    starting = executor.submit({"seconds": 1, "pid_file": str(tmp_path / "pid")})
    assert reached.wait(30), "the invocation never reached the runtime"

    executor.cancel()

    with pytest.raises(CancelledError):
        starting.result(timeout=30)
    assert not (tmp_path / "pid").exists()


def test_cancel_drops_asynchronous_events_that_wait_for_a_slot(local_executor, tmp_path, read_pid, process_exists,
                                                               caplog):
    """One event is already taken off the queue, waiting for the slot; the other is still queued."""
    executor = local_executor("sleep", concurrency=1)
    running = executor.submit({"seconds": 60, "pid_file": str(tmp_path / "pid")})
    pid = read_pid(tmp_path / "pid")
    events = [executor.invoke_async({"seconds": 0, "pid_file": str(tmp_path / name)}) for name in ("never", "nor")]

    executor.cancel()

    with pytest.raises(InvocationError, match="cancelled"):
        running.result(timeout=10)
    assert not process_exists(pid)
    for request_id in events:  # cancel() returns once every event is dropped, none can start later
        assert f"dropped asynchronous invocation {request_id}" in caplog.text
    assert not (tmp_path / "never").exists() and not (tmp_path / "nor").exists()
    with pytest.raises(CancelledError):
        executor.invoke_async({"seconds": 0})


class BlockingExecutor(ServerlessExecutor):
    """Invocations that run until released: stands for AWS, where a running invocation cannot be stopped."""

    def __init__(self) -> None:
        super().__init__(max_concurrency=1)
        self.started = threading.Event()
        self.release = threading.Event()

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        self.release.wait(60)
        return event

    def invoke_async(self, event: dict[str, Any]) -> str:
        raise NotImplementedError


def test_close_after_cancel_does_not_wait_for_running_invocations():
    executor = BlockingExecutor()
    try:
        running = executor.submit({"n": 1})
        queued = executor.submit({"n": 2})
        assert executor.started.wait(10)
        executor.cancel()
        started = time.monotonic()

        executor.close()

        assert time.monotonic() - started < 10
        assert queued.cancelled()
        assert not running.done()
    finally:
        executor.release.set()
    assert running.result(timeout=10) == {"n": 1}


def test_leaving_the_with_block_on_an_error_cancels_running_work(function_config, tmp_path, read_pid,
                                                                  process_exists):
    executor = LocalLambdaExecutor(function_name="sleep", function=function_config("sleep"))
    with pytest.raises(KeyError), executor:
        executor.submit({"seconds": 60, "pid_file": str(tmp_path / "pid")})
        pid = read_pid(tmp_path / "pid")
        raise KeyError("the task failed while workers ran")

    assert not process_exists(pid)


def test_lambda_executor_retries_throttled_invocations_until_a_slot_frees(
        function_config, start_runtime, tmp_path, read_pid, wait_for, caplog):
    runtime = start_runtime({"hold": function_config("hold", concurrency=1)})
    release = tmp_path / "release"
    caplog.set_level(logging.DEBUG, logger="cirrus_airflow.executor.lambda_executor")
    executor = LambdaExecutor(local_lambda_client(runtime.endpoint_url, timeout_s=60), "hold",
                              max_concurrency=2, max_retries=200, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        first = executor.submit({"release_file": str(release), "pid_file": str(tmp_path / "pid")})
        read_pid(tmp_path / "pid")
        second = executor.submit({"release_file": str(release)})
        wait_for(lambda: "hold throttled; retry" in caplog.text, what="the second invocation to be throttled")
        release.touch()

        assert first.result(timeout=30) == {"released": True}
        assert second.result(timeout=30) == {"released": True}
    finally:
        release.touch()
        executor.close()


def test_throttling_is_retried_then_succeeds(stubbed_client):
    client, stubber = stubbed_client
    for _ in range(2):
        stubber.add_client_error("invoke", service_error_code="TooManyRequestsException",
                                 service_message="Rate Exceeded.", http_status_code=429)
    stubber.add_response("invoke", {"StatusCode": 200, "Payload": streaming(b'{"ok": true}')},
                         {"FunctionName": "cirrus-worker", "InvocationType": "RequestResponse",
                          "LogType": "Tail", "Payload": b'{"task": "evaluate"}'})
    executor = LambdaExecutor(client, "cirrus-worker", backoff_base_s=0.001, backoff_max_s=0.01)

    assert executor.invoke({"task": "evaluate"}) == {"ok": True}


def test_throttling_past_the_limit_gives_an_actionable_error(stubbed_client):
    client, stubber = stubbed_client
    for _ in range(4):
        stubber.add_client_error("invoke", service_error_code="TooManyRequestsException",
                                 service_message="Rate Exceeded.", http_status_code=429)
    executor = LambdaExecutor(client, "cirrus-worker", max_retries=3, backoff_base_s=0.001,
                              backoff_max_s=0.01, max_concurrency=16)

    with pytest.raises(InvocationThrottledError) as throttled:
        executor.invoke({"task": "train.worker"})

    message = str(throttled.value)
    assert isinstance(throttled.value, InvocationError)
    assert throttled.value.error_type == "TooManyRequestsException"
    assert throttled.value.event_task == "train.worker"
    assert "'cirrus-worker' refused the invocation 4 times" in message
    assert "Rate Exceeded." in message
    assert "reserved concurrency" in message and "max_concurrency (now 16)" in message


def fail_sends(client: Any, failures: list[Exception]) -> list[str]:
    """Make the client's next sends fail with ``failures``, in order; returns the log of every send."""
    sends: list[str] = []

    def before_send(request: Any, **_: Any) -> None:
        sends.append(request.url)
        if failures:
            raise failures.pop(0)

    client.meta.events.register("before-send.lambda.Invoke", before_send)
    return sends


def test_connection_failures_are_retried_then_succeed(function_config, start_runtime):
    runtime = start_runtime({"echo": function_config("echo")})
    client = local_lambda_client(runtime.endpoint_url, timeout_s=60)
    sends = fail_sends(client, [EndpointConnectionError(endpoint_url=runtime.endpoint_url),
                                ConnectTimeoutError(endpoint_url=runtime.endpoint_url)])
    executor = LambdaExecutor(client, "echo", backoff_base_s=0.001, backoff_max_s=0.01)

    assert executor.invoke({"n": 1})["event"] == {"n": 1}
    assert len(sends) == 3


def test_an_unreachable_endpoint_is_retried_up_to_the_limit():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = local_lambda_client(closed, timeout_s=60)
    sends = fail_sends(client, [])
    executor = LambdaExecutor(client, "cirrus-worker", max_retries=2, backoff_base_s=0.001, backoff_max_s=0.01)

    with pytest.raises(EndpointConnectionError, match="Could not connect"):
        executor.invoke({})
    assert len(sends) == 3


def test_a_read_timeout_is_never_retried():
    """The first attempt may still be running: sending the event again could run a worker twice."""
    client = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client(
        "lambda", region_name="us-east-1", config=lambda_client_config(60))
    sends = fail_sends(client, [ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")] * 3)
    executor = LambdaExecutor(client, "cirrus-worker", backoff_base_s=0.001, backoff_max_s=0.01)

    with pytest.raises(ReadTimeoutError):
        executor.invoke({"task": "train.worker"})
    assert len(sends) == 1


def test_other_client_errors_are_not_retried(stubbed_client):
    client, stubber = stubbed_client
    stubber.add_client_error("invoke", service_error_code="ResourceNotFoundException",
                             service_message="Function not found", http_status_code=404)
    executor = LambdaExecutor(client, "cirrus-worker", backoff_base_s=0.001, backoff_max_s=0.01)

    with pytest.raises(client.exceptions.ResourceNotFoundException):
        executor.invoke({})


def test_function_error_from_aws_becomes_invocation_error(stubbed_client):
    client, stubber = stubbed_client
    payload = json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": "RequestId: r-1 Error: Task timed out"})
    stubber.add_response("invoke", {
        "StatusCode": 200, "FunctionError": "Unhandled", "Payload": streaming(payload.encode()),
        "LogResult": base64.b64encode(b"START RequestId: r-1\nREPORT RequestId: r-1").decode(),
        "ResponseMetadata": {"RequestId": "r-1"},
    })
    executor = LambdaExecutor(client, "cirrus-worker", qualifier="live")

    with pytest.raises(InvocationError) as failure:
        executor.invoke({"task": "train.worker"})

    assert failure.value.error_type == "Sandbox.Timedout"
    assert failure.value.request_id == "r-1"
    assert failure.value.log_tail.endswith("REPORT RequestId: r-1")


def test_invoke_async_returns_the_request_id(stubbed_client):
    client, stubber = stubbed_client
    stubber.add_response("invoke", {"StatusCode": 202, "ResponseMetadata": {"RequestId": "r-async"}},
                         {"FunctionName": "cirrus-worker", "Qualifier": "live", "InvocationType": "Event",
                          "Payload": b"{}"})
    executor = LambdaExecutor(client, "cirrus-worker", qualifier="live")

    assert executor.invoke_async({}) == "r-async"


def test_full_jitter_stays_under_an_exponential_cap():
    rng = random.Random(11)
    for attempt in range(12):
        cap = min(2.0, 0.1 * 2 ** attempt)
        delays = [full_jitter_delay(attempt, 0.1, 2.0, rng) for _ in range(300)]
        assert all(0.0 <= delay <= cap for delay in delays)
        assert max(delays) > 0.8 * cap


def test_a_client_that_retries_on_its_own_is_flagged(caplog):
    client = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client(
        "lambda", region_name="us-east-1")

    LambdaExecutor(client, "cirrus-worker")

    assert "lambda_client_config" in caplog.text


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"max_retries": -1}, "max_retries"),
    ({"backoff_base_s": 2.0, "backoff_max_s": 1.0}, "backoff"),
])
def test_lambda_executor_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        LambdaExecutor(None, "cirrus-worker", **settings)
