"""The local Lambda runtime, driven through an unmodified boto3 Lambda client as the AWS code path would be."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import EndpointConnectionError

from cirrus_airflow.executor import FunctionConfig, LocalLambdaRuntime, local_lambda_client, local_runtime
from cirrus_airflow.executor.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parents[2]


def client_for(runtime: LocalLambdaRuntime, timeout_s: float = 60.0) -> Any:
    return local_lambda_client(runtime.endpoint_url, timeout_s=timeout_s)


def invoke(client: Any, function_name: str, event: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=function_name, Payload=json.dumps(event).encode(), **kwargs)
    return response, json.loads(response["Payload"].read())


def test_round_trip_gives_the_handler_a_lambda_context_and_environment(function_config, start_runtime):
    runtime = start_runtime({"echo": function_config("echo", memory_mb=256, timeout_s=30,
                                                     environment={"AWS_DEFAULT_REGION": "eu-west-1"})})
    client = client_for(runtime)

    response, result = invoke(client, "echo", {"task": "noop", "values": [1, 2.5, "x"]})

    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert result["event"] == {"task": "noop", "values": [1, 2.5, "x"]}
    context = result["context"]
    assert context["function_name"] == "echo"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"].endswith(":function:echo")
    assert context["memory_limit_in_mb"] == "256"  # a string, as in Lambda's Python runtime
    assert context["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert context["log_group_name"] == "/aws/lambda/echo"
    assert "[$LATEST]" in context["log_stream_name"]
    assert 0 < context["remaining_ms"] <= 30_000
    assert result["env"] == {
        "AWS_LAMBDA_FUNCTION_NAME": "echo",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
        "AWS_ENDPOINT_URL_LAMBDA": runtime.endpoint_url,
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "CIRRUS_TEST_SETTING": "from-the-function",
    }


def test_warm_worker_is_reused_and_gone_after_stop(function_config, process_exists):
    runtime = LocalLambdaRuntime({"echo": function_config("echo")}).start()
    try:
        client = client_for(runtime)
        first = invoke(client, "echo", {})[1]["pid"]
        second = invoke(client, "echo", {})[1]["pid"]
    finally:
        runtime.stop()

    assert first == second
    assert not process_exists(first)


def test_stop_kills_running_invocations_and_leaves_no_threads(function_config, tmp_path, read_pid, process_exists):
    threads_before = set(threading.enumerate())
    runtime = LocalLambdaRuntime({"sleep": function_config("sleep")}).start()
    client = client_for(runtime)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(invoke, client, "sleep", {"seconds": 60, "pid_file": str(tmp_path / "pid")})
        pid = read_pid(tmp_path / "pid")
        started = time.monotonic()
        runtime.stop()
        response, error = running.result(timeout=10)

    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ExitError"
    assert "stopped" in error["errorMessage"]
    assert not process_exists(pid)
    assert set(threading.enumerate()) - threads_before == set()


def test_handler_exception_is_an_unhandled_function_error(function_config, start_runtime):
    client = client_for(start_runtime({"fail": function_config("fail")}))

    response, error = invoke(client, "fail", {"x": 7})

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "cannot use x=7"
    assert error["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert any("in fail" in frame for frame in error["stackTrace"])


def test_timeout_kills_the_worker_and_the_next_invocation_works(function_config, start_runtime, tmp_path,
                                                                 read_pid, process_exists):
    client = client_for(start_runtime({"sleep": function_config("sleep", timeout_s=1)}))
    started = time.monotonic()

    response, error = invoke(client, "sleep", {"seconds": 60, "pid_file": str(tmp_path / "pid")})

    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled"
    request_id = response["ResponseMetadata"]["RequestId"]
    assert error == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {request_id} Error: Task timed out after 1.00 seconds",
    }
    assert not process_exists(read_pid(tmp_path / "pid"))
    response, result = invoke(client, "sleep", {"seconds": 0})
    assert "FunctionError" not in response
    assert result["slept"] == 0


def test_remaining_time_counts_down_from_the_timeout(function_config, start_runtime):
    client = client_for(start_runtime({"clock": function_config("remaining_time", timeout_s=5)}))

    result = invoke(client, "clock", {})[1]

    assert 4000 < result["first"] <= 5000
    assert 0 < result["second"] <= result["first"] - 150


def test_memory_limit_kills_the_worker(function_config, start_runtime, tmp_path, read_pid, process_exists):
    client = client_for(start_runtime({"allocate": function_config("allocate", memory_mb=128)}))
    started = time.monotonic()

    response, error = invoke(client, "allocate", {"mb": 400, "hold_s": 30, "pid_file": str(tmp_path / "pid")})

    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.OutOfMemory"
    assert error["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
    assert not process_exists(read_pid(tmp_path / "pid"))


def test_memory_spike_between_samples_is_caught_when_the_worker_replies(function_config, start_runtime, monkeypatch):
    monkeypatch.setattr(local_runtime, "_WATCH_INTERVAL_S", 3600.0)  # no sampling: only the peak check is left
    client = client_for(start_runtime({"allocate": function_config("allocate", memory_mb=128)}))

    response, error = invoke(client, "allocate", {"mb": 400})

    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.OutOfMemory"


def test_memory_used_by_the_parent_does_not_count_against_a_worker(function_config, start_runtime):
    """A worker's peak must be its own: a large parent (an Airflow worker) must not make every invocation fail."""
    parent_ballast = b"\x01" * (300 << 20)  # noqa: F841 - held until the test ends
    client = client_for(start_runtime({"allocate": function_config("allocate", memory_mb=128)}))

    response, result = invoke(client, "allocate", {"mb": 10})

    assert "FunctionError" not in response
    assert result == {"allocated": 10 << 20}


def test_worker_that_exits_is_reported_as_exit_error(function_config, start_runtime):
    client = client_for(start_runtime({"exit": function_config("exit_hard")}))

    response, error = invoke(client, "exit", {})

    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"].endswith("Runtime exited with error: exit status 3")


@pytest.mark.parametrize(("handler", "error_type", "message"), [
    ("unserialisable", "Runtime.MarshalError", "Unable to marshal response: Object of type set"),
    ("oversized", "Function.ResponseSizeTooLarge", "exceeded maximum allowed payload size (6291456 bytes)"),
])
def test_result_that_lambda_cannot_return_is_an_error(function_config, start_runtime, handler, error_type, message):
    client = client_for(start_runtime({handler: function_config(handler)}))

    response, error = invoke(client, handler, {})

    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == error_type
    assert message in error["errorMessage"]


@pytest.mark.parametrize(("handler", "error_type", "message"), [
    ("cirrus_test_handlers.missing", "Runtime.HandlerNotFound", "Handler 'missing' missing on module"),
    ("no_such_module.handler", "Runtime.ImportModuleError", "Unable to import module 'no_such_module'"),
])
def test_handler_that_cannot_be_loaded_is_an_init_error(function_config, start_runtime, handler, error_type, message):
    config = function_config("echo")
    client = client_for(start_runtime({"broken": FunctionConfig(handler=handler, environment=config.environment)}))

    response, error = invoke(client, "broken", {})

    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == error_type
    assert message in error["errorMessage"]


def test_sync_invocation_over_reserved_concurrency_is_throttled(function_config, start_runtime, tmp_path, read_pid):
    client = client_for(start_runtime({"hold": function_config("hold", concurrency=1)}))
    release = tmp_path / "release"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(invoke, client, "hold", {"release_file": str(release), "pid_file": str(tmp_path / "pid")})
        read_pid(tmp_path / "pid")
        try:
            with pytest.raises(client.exceptions.TooManyRequestsException) as throttled:
                invoke(client, "hold", {"release_file": str(release)})
        finally:
            release.touch()
        response, result = first.result(timeout=10)

    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert throttled.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert result == {"released": True}


def test_async_invocation_runs_in_the_background(function_config, start_runtime, tmp_path, wait_for):
    client = client_for(start_runtime({"touch": function_config("touch")}))
    target = tmp_path / "touched.json"

    response = client.invoke(FunctionName="touch", InvocationType="Event",
                              Payload=json.dumps({"path": str(target)}).encode())

    assert response["StatusCode"] == 202
    wait_for(target.exists, what="the asynchronous invocation to write its file")
    assert json.loads(target.read_text()) == {"request_id": response["ResponseMetadata"]["RequestId"]}


def test_async_invocations_wait_for_a_free_slot(function_config, start_runtime, tmp_path, wait_for):
    client = client_for(start_runtime({"touch": function_config("touch", concurrency=1)}))
    targets = [tmp_path / f"touched-{index}.json" for index in range(5)]

    for target in targets:
        client.invoke(FunctionName="touch", InvocationType="Event", Payload=json.dumps({"path": str(target)}).encode())

    wait_for(lambda: all(target.exists() for target in targets), what="all queued events to run")


def test_async_failure_is_logged(function_config, start_runtime, caplog, wait_for):
    client = client_for(start_runtime({"fail": function_config("fail")}))

    response = client.invoke(FunctionName="fail", InvocationType="Event", Payload=b'{"x": "async"}')

    request_id = response["ResponseMetadata"]["RequestId"]
    wait_for(lambda: any(request_id in record.getMessage() and record.levelname == "ERROR"
                         for record in caplog.records), what="the failure to be logged")
    failure = next(record.getMessage() for record in caplog.records if request_id in record.getMessage())
    assert "cannot use x='async'" in failure


def test_cancel_kills_running_invocations_and_refuses_new_ones(function_config, start_runtime, tmp_path, read_pid,
                                                               process_exists):
    runtime = start_runtime({"sleep": function_config("sleep")})
    client = client_for(runtime)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(invoke, client, "sleep", {"seconds": 60, "pid_file": str(tmp_path / "pid")})
        pid = read_pid(tmp_path / "pid")

        runtime.cancel()
        response, error = running.result(timeout=10)

    assert error["errorType"] == "Runtime.ExitError"
    assert "cancelled" in error["errorMessage"]
    assert not process_exists(pid)
    with pytest.raises(EndpointConnectionError):
        client.invoke(FunctionName="sleep", Payload=b'{"seconds": 0}')
    runtime.cancel()  # a second call, or stop(), returns at once


def test_a_runtime_failure_after_the_worker_is_taken_still_retires_it(function_config, start_runtime, tmp_path,
                                                                       read_pid, process_exists, monkeypatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("simulated runtime bug")

    monkeypatch.setattr(local_runtime, "_outcome", broken)
    client = client_for(start_runtime({"sleep": function_config("sleep")}))

    with pytest.raises(client.exceptions.ServiceException, match="simulated runtime bug"):
        invoke(client, "sleep", {"seconds": 0, "pid_file": str(tmp_path / "pid")})

    assert not process_exists(read_pid(tmp_path / "pid"))


def test_a_reply_that_arrived_wins_over_a_kill_that_came_after_it(function_config, start_runtime, monkeypatch):
    """The watchdog may fire between the reply and the runtime's look at it: the handler did finish in time."""
    client = client_for(start_runtime({"echo": function_config("echo")}))
    run = WorkerProcess.run

    def run_then_time_out(worker: WorkerProcess, request: dict[str, Any]) -> dict[str, Any] | None:
        reply = run(worker, request)
        worker.kill("timeout")
        return reply

    with monkeypatch.context() as patch:
        patch.setattr(WorkerProcess, "run", run_then_time_out)
        response, first = invoke(client, "echo", {"n": 1})
    again, second = invoke(client, "echo", {"n": 2})

    assert "FunctionError" not in response
    assert first["event"] == {"n": 1}
    assert "FunctionError" not in again
    assert second["pid"] != first["pid"]  # the killed worker was not kept warm


def test_workers_die_with_the_process_that_started_them(function_config, tmp_path, read_pid, process_exists,
                                                        wait_for):
    """SIGKILL gives the runtime no chance to stop its workers: their lifelines must end them."""
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import json, sys
        from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
        environment, pid_file = sys.argv[1:]
        function = FunctionConfig(handler="cirrus_test_handlers.sleep", environment=json.loads(environment))
        LocalLambdaExecutor(function_name="sleep", function=function).invoke({"seconds": 60, "pid_file": pid_file})
    """), json.dumps(function_config("sleep").environment), str(tmp_path / "pid")], cwd=REPO)
    try:
        worker_pid = read_pid(tmp_path / "pid")
    finally:
        starter.kill()
        starter.wait()
    try:
        wait_for(lambda: not process_exists(worker_pid), what="the worker to die with the process that started it")
    finally:
        if process_exists(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)


@pytest.mark.parametrize("length", ["-1", "lots"])
def test_a_malformed_content_length_is_refused_at_once(function_config, start_runtime, length):
    endpoint = urlsplit(start_runtime({"echo": function_config("echo")}).endpoint_url)
    with socket.create_connection((endpoint.hostname, endpoint.port), timeout=10) as sock:
        sock.sendall(f"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: {endpoint.netloc}\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):  # the server answers, then closes; a hang times out after 10 s
            reply += chunk

    assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert b"Content-Length must be a byte count" in reply


def test_unknown_function_or_version_is_not_found(function_config, start_runtime):
    client = client_for(start_runtime({"echo": function_config("echo")}))

    with pytest.raises(client.exceptions.ResourceNotFoundException, match="function:nope"):
        client.invoke(FunctionName="nope", Payload=b"{}")
    with pytest.raises(client.exceptions.ResourceNotFoundException, match="function:echo:7"):
        client.invoke(FunctionName="echo", Qualifier="7", Payload=b"{}")
    by_arn = client.invoke(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:echo:$LATEST", Payload=b"{}")
    assert json.loads(by_arn["Payload"].read())["context"]["function_name"] == "echo"


def test_tail_returns_the_invocation_log(function_config, start_runtime):
    client = client_for(start_runtime({"echo": function_config("echo", memory_mb=512)}))

    response, _ = invoke(client, "echo", {"marker": "tail-test"}, LogType="Tail")

    log = base64.b64decode(response["LogResult"]).decode()
    request_id = response["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {request_id} Version: $LATEST" in log
    assert 'echo handler saw {"marker": "tail-test"}' in log
    assert f"END RequestId: {request_id}" in log
    report = next(line for line in log.splitlines() if line.startswith("REPORT"))
    for field in ("Duration:", "Billed Duration:", "Memory Size: 512 MB", "Max Memory Used:", "Init Duration:"):
        assert field in report
    assert "LogResult" not in invoke(client, "echo", {})[0]


def test_payload_limits_and_bad_payloads_are_refused(function_config, start_runtime):
    client = client_for(start_runtime({"echo": function_config("echo")}))

    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName="echo", Payload=json.dumps({"data": "x" * (7 << 20)}).encode())
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName="echo", InvocationType="Event",
                      Payload=json.dumps({"data": "x" * (300 << 10)}).encode())
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="echo", Payload=b"{not json")
    assert invoke(client, "echo", {"data": "x" * (1 << 20)})[1]["event"]["data"] == "x" * (1 << 20)


def test_dry_run_checks_without_running(function_config, start_runtime):
    client = client_for(start_runtime({"echo": function_config("echo")}))

    assert client.invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")["StatusCode"] == 204
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="nope", InvocationType="DryRun", Payload=b"{}")


def test_other_operations_are_refused_clearly(function_config, start_runtime):
    client = client_for(start_runtime({"echo": function_config("echo")}))

    with pytest.raises(client.exceptions.ClientError, match="only serves Invoke"):
        client.get_function(FunctionName="echo")


@pytest.mark.parametrize(("settings", "message"), [
    ({"handler": "no_dot"}, "module.function"),
    ({"memory_mb": 64}, "memory_mb"),
    ({"timeout_s": 901}, "timeout_s"),
    ({"concurrency": 0}, "concurrency"),
    ({"environment": {"DEPTH": 3}}, "DEPTH"),
])
def test_function_config_rejects_what_lambda_would(settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FunctionConfig(**settings)


def test_runtime_needs_start_before_use_and_cannot_restart(function_config):
    runtime = LocalLambdaRuntime({"echo": function_config("echo")})
    with pytest.raises(RuntimeError, match="start"):
        _ = runtime.endpoint_url
    runtime.start()
    runtime.stop()
    with pytest.raises(RuntimeError, match="already started"):
        runtime.start()
