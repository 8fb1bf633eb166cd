"""The AWS Lambda back end: events go to a function through a boto3 ``lambda`` client.

In Airflow the client comes from the Amazon provider (``LambdaHook(aws_conn_id).conn``); on
the command line from boto3. Either way it should be built with ``lambda_client_config``.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from concurrent.futures import CancelledError
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from cirrus_airflow.executor.base import InvocationError, ServerlessExecutor

logger = logging.getLogger(__name__)

_THROTTLING_CODES = frozenset({"TooManyRequestsException", "ThrottlingException"})
_NEVER_SENT = (EndpointConnectionError, ConnectTimeoutError)
_READ_TIMEOUT_MARGIN_S = 60.0
_CONNECT_TIMEOUT_S = 10.0


class InvocationThrottledError(InvocationError):
    """Lambda kept refusing the invocation for lack of concurrency, past the executor's retries."""


def lambda_client_config(timeout_s: float, *, max_pool_connections: int = 10) -> Config:
    """botocore settings for a client that invokes functions whose time limit is ``timeout_s`` seconds.

    The read timeout outlasts the function, so a long but healthy invocation is not cut off.
    botocore's own retries are off: after a read timeout the first attempt may still be
    running, and a retry would run the worker a second time (a training worker would push its
    gradients twice). The failures where the function provably did not run, throttling and a
    connection that could not be opened, are retried by ``LambdaExecutor`` itself. TCP
    keep-alive keeps long synchronous invocations alive through NAT gateways, as AWS advises.
    """
    return Config(
        read_timeout=timeout_s + _READ_TIMEOUT_MARGIN_S,
        connect_timeout=_CONNECT_TIMEOUT_S,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        tcp_keepalive=True,
    )


def full_jitter_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): uniform in [0, min(max_s, base_s * 2**attempt)].

    Full jitter spreads the retries of many throttled threads, so they do not come back together.
    """
    cap = min(max_s, base_s * 2.0 ** attempt)
    return (rng or random).uniform(0.0, cap)


class LambdaExecutor(ServerlessExecutor):
    """Invokes ``function_name`` (at ``qualifier``, if given) with a boto3 Lambda client.

    Invocations that provably never ran are retried up to ``max_retries`` times with
    exponential backoff and full jitter: throttled ones (429 TooManyRequestsException, then
    raised as ``InvocationThrottledError``) and those whose connection could not be opened
    (``EndpointConnectionError``, ``ConnectTimeoutError``). A read timeout is never retried:
    the first attempt may still be running. Running invocations cannot be stopped on AWS:
    ``cancel()`` only cancels what has not been sent. ``time_limit_s`` is the function's
    timeout when the caller knows it (work that hands over before it checks against it),
    ``memory_mb`` its memory size (what the cost of an invocation-second depends on).
    """

    def __init__(self, client: Any, function_name: str, *, qualifier: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 8,
                 backoff_base_s: float = 0.1, backoff_max_s: float = 20.0,
                 time_limit_s: float | None = None, memory_mb: int | None = None) -> None:
        super().__init__(max_concurrency=max_concurrency)
        if not function_name:
            raise ValueError("function_name must name the Lambda function to invoke")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise ValueError(
                f"backoff must satisfy 0 < backoff_base_s <= backoff_max_s, got {backoff_base_s} and {backoff_max_s}"
            )
        self.function_name = function_name
        self.qualifier = qualifier
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.time_limit_s = time_limit_s
        self.memory_mb = memory_mb
        self._client = client
        if client is not None:
            _warn_if_client_retries(client, function_name)

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        response = self._call_invoke(event, "RequestResponse")
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            raise self._invocation_error(event, payload, response)
        return json.loads(payload)

    def invoke_async(self, event: dict[str, Any]) -> str:
        response = self._call_invoke(event, "Event")
        return response["ResponseMetadata"]["RequestId"]

    def _lambda_client(self) -> Any:
        return self._client

    def _call_invoke(self, event: dict[str, Any], invocation_type: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "FunctionName": self.function_name,
            "InvocationType": invocation_type,
            "Payload": json.dumps(event).encode("utf-8"),
        }
        if self.qualifier:
            request["Qualifier"] = self.qualifier
        if invocation_type == "RequestResponse":
            request["LogType"] = "Tail"
        client = self._lambda_client()
        attempt = 0
        while True:
            self._raise_if_cancelled()
            try:
                return client.invoke(**request)
            except Exception as error:
                if self._cancelled.is_set():  # e.g. the local runtime, stopped by cancel(), refused it
                    raise CancelledError("the executor was cancelled while this invocation was sent") from error
                why = _why_retry(error)
                if why is None:
                    raise
                if attempt >= self.max_retries:
                    if isinstance(error, ClientError):
                        raise self._throttled_error(event, error) from error
                    raise
            delay = full_jitter_delay(attempt, self.backoff_base_s, self.backoff_max_s)
            logger.debug("%s %s; retry %d in %.2f s", self.function_name, why, attempt + 1, delay)
            self._cancelled.wait(delay)
            attempt += 1

    def _throttled_error(self, event: dict[str, Any], error: ClientError) -> InvocationThrottledError:
        details = error.response.get("Error", {})
        code = details.get("Code") or "TooManyRequestsException"
        message = (
            f"Lambda function {self.function_name!r} refused the invocation {self.max_retries + 1} times "
            f"in a row ({code}: {details.get('Message') or 'throttled'}); give the function more reserved "
            f"concurrency, or lower max_concurrency (now {self.max_concurrency}) or raise max_retries "
            f"(now {self.max_retries})"
        )
        return InvocationThrottledError(
            code, message, request_id=error.response.get("ResponseMetadata", {}).get("RequestId"),
            event_task=_task_of(event),
        )

    def _invocation_error(self, event: dict[str, Any], payload: bytes, response: dict[str, Any]) -> InvocationError:
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        request_id = response.get("ResponseMetadata", {}).get("RequestId") or body.get("requestId")
        log_tail = None
        if response.get("LogResult"):
            log_tail = base64.b64decode(response["LogResult"]).decode("utf-8", "replace")
            logger.warning("Lambda function %s failed (request %s); end of its log:\n%s",
                           self.function_name, request_id, log_tail)
        return InvocationError(
            body.get("errorType") or response["FunctionError"],
            body.get("errorMessage") or payload.decode("utf-8", "replace"),
            request_id=request_id,
            event_task=_task_of(event),
            log_tail=log_tail,
        )


def _why_retry(error: Exception) -> str | None:
    """Why the invocation can safely be sent again (it provably never ran), or None if it cannot."""
    if isinstance(error, _NEVER_SENT):
        return f"unreachable ({error})"
    if isinstance(error, ClientError) and _is_throttling(error):
        return "throttled"
    return None


def _is_throttling(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _THROTTLING_CODES or status == 429


def _task_of(event: Any) -> str | None:
    task = event.get("task") if isinstance(event, dict) else None
    return str(task) if task is not None else None


def _warn_if_client_retries(client: Any, function_name: str) -> None:
    """A client that retries Invoke on its own can run a worker twice; say so once, at construction."""
    retries = getattr(client.meta.config, "retries", None) or {}
    if retries.get("total_max_attempts") != 1:
        logger.warning(
            "the Lambda client used for %s retries requests on its own, which can run a worker twice after a "
            "read timeout; build it with config=lambda_client_config(timeout_s)", function_name,
        )
