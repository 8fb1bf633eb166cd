"""The process inside one local Lambda sandbox: it imports the handler once, then runs invocations.

The local runtime starts it as ``python -m cirrus_airflow.executor.local_worker MODULE.FUNCTION FD``
and keeps it warm between invocations, as Lambda keeps a container. FD is the worker's
lifeline, a pipe that reaches end of file when the runtime's process dies: a daemon thread
waits on it and then kills the worker's process group (the worker leads its own session), so a
handler never runs on after the task that started it was killed. Requests arrive on stdin
and replies leave on stdout (see ``protocol``); before anything else the worker moves both pipes
to private descriptors and points fds 0 and 1 at /dev/null and stderr, so that a handler's
``print`` or a subprocess it starts cannot corrupt the protocol. Everything the handler writes
ends up on stderr, which the runtime turns into the invocation's log.

The function's identity comes from the ``AWS_LAMBDA_*`` environment variables, as in Lambda.
This module must stay light: every cold start imports it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

from cirrus_airflow.executor import protocol

Handler = Callable[[Any, "LambdaContext"], Any]


class LambdaContext:
    """The ``context`` argument of a handler, with the attributes of Lambda's Python runtime."""

    def __init__(self, *, aws_request_id: str, invoked_function_arn: str, deadline_ms: float) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
        self.memory_limit_in_mb = os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        self.log_group_name = os.environ["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.invoked_function_arn = invoked_function_arn
        self.aws_request_id = aws_request_id
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Time left before the runtime kills this invocation; handlers hand over work before it reaches 0."""
        return max(0, int(self._deadline_ms - time.time() * 1000))


class _InitError(Exception):
    """The handler could not be loaded; carries the error type Lambda reports for it."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _hold_lifeline(descriptor: int) -> None:
    """Kill this worker and everything it started once the runtime's process is gone.

    Nobody writes to the lifeline, so a read returns only at end of file (or fails, which
    means the same: the worker can no longer tell that its runtime is alive).
    """
    os.set_inheritable(descriptor, False)  # the handler's own children have no use for it

    def wait_for_end_of_file() -> None:
        with contextlib.suppress(OSError):
            while os.read(descriptor, 64):
                pass
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=wait_for_end_of_file, name="cirrus-lifeline", daemon=True).start()


def _take_protocol_pipes() -> tuple[BinaryIO, BinaryIO]:
    """Move the protocol off fds 0 and 1; the duplicates are not inherited by child processes."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, replies


def _load_handler(spec: str) -> Handler:
    module_name, _, function_name = spec.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # anything the module raises while importing is an init failure
        traceback.print_exc()
        detail = str(error) if isinstance(error, ImportError) else f"{type(error).__name__}: {error}"
        raise _InitError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {detail}") from error
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise _InitError("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'")
    return handler


def _error_reply(error: BaseException) -> dict[str, Any]:
    """Report a handler exception the way Lambda's Python runtime does, in the log and in the reply."""
    print(f"[ERROR] {type(error).__name__}: {error}", file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)
    return {
        "type": "error",
        "errorType": type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": traceback.format_list(traceback.extract_tb(error.__traceback__)),
    }


def _invoke(handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    context = LambdaContext(
        aws_request_id=request["request_id"],
        invoked_function_arn=request["invoked_function_arn"],
        deadline_ms=request["deadline_ms"],
    )
    try:
        result = handler(json.loads(request["payload"]), context)
    except Exception as error:  # the handler's failure is the invocation's result, not the worker's
        return _error_reply(error)
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as error:
        print(f"[ERROR] Runtime.MarshalError: Unable to marshal response: {error}", file=sys.stderr)
        return {"type": "error", "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {error}", "stackTrace": []}
    return {"type": "result", "payload": payload}


def _mark_end_of_log(request_id: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{protocol.END_OF_INVOCATION_LOG}{request_id}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Load the handler, report readiness (or the init error), then serve invocations until stdin closes."""
    handler_spec, lifeline = argv if argv is not None else sys.argv[1:]
    _hold_lifeline(int(lifeline))
    requests, replies = _take_protocol_pipes()
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper(),
        format="[%(levelname)s] %(name)s: %(message)s",
    )
    try:
        handler = _load_handler(handler_spec)
    except _InitError as failure:
        protocol.send(replies, {"type": "init_error", "errorType": failure.error_type,
                                "errorMessage": str(failure), "stackTrace": []})
        return 1
    protocol.send(replies, {"type": "ready"})
    while (request := protocol.receive(requests)) is not None:
        reply = _invoke(handler, request)
        _mark_end_of_log(request["request_id"])
        protocol.send(replies, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
