"""Airflow hooks: storage and serverless executors from Airflow connections.

Credentials never pass through this package's own code: S3 and Lambda clients come
from the Amazon provider's hooks, which read the ``aws_default`` connection
(``endpoint_url``, ``region_name``, ``role_arn``, ... in its extras) or fall back
to boto3's credential chain. The embedded local runtime gets the same credentials
and endpoints as environment variables, the way a Lambda function gets its role's.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import BaseHook, conf

from cirrus_airflow.executor import ExecutorSettings, ServerlessExecutor, default_executor_kind
from cirrus_airflow.storage import Storage

log = logging.getLogger(__name__)


def configured_executor_kind() -> str:
    """``[cirrus] executor`` from Airflow's configuration (file or environment), else
    what the CLI would use."""
    return conf.get("cirrus", "executor", fallback=default_executor_kind())


class CirrusHook(BaseHook):
    """Storage and a serverless executor for one task, from one AWS connection.

    ``executor="lambda"`` invokes a deployed function through the connection;
    ``executor="local"`` starts the embedded Lambda runtime, whose workers reach S3
    with the connection's credentials and endpoint. The default is ``[cirrus]
    executor`` (``AIRFLOW__CIRRUS__EXECUTOR``), else ``local``.
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    hook_name = "Cirrus serverless"

    def __init__(self, *, aws_conn_id: str | None = "aws_default", settings: ExecutorSettings | None = None) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.settings = settings or ExecutorSettings(kind=configured_executor_kind())

    def get_storage(self) -> Storage:
        return Storage(s3_client_factory=lambda: S3Hook(aws_conn_id=self.aws_conn_id).get_conn())

    def get_executor(self) -> ServerlessExecutor:
        """A new executor; close it (use it as a context manager): it owns threads, and
        with ``local`` a runtime and its worker processes."""
        if self.settings.kind == "lambda":
            return self.settings.build(
                lambda_client=lambda config: LambdaHook(aws_conn_id=self.aws_conn_id, config=config).conn
            )
        return self.settings.build(local_environment=self.worker_environment())

    def worker_environment(self) -> dict[str, str]:
        """What the local runtime's workers need to reach S3 as this connection does."""
        hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="s3")
        env: dict[str, str] = {}
        region = hook.conn_region_name
        if region:
            env["AWS_DEFAULT_REGION"] = region
        endpoint = hook.conn_config.get_service_endpoint_url("s3")
        if endpoint:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        try:
            creds = hook.get_credentials()
        except Exception as exc:  # noqa: BLE001 - no credentials is fine for local-only data
            log.info("no AWS credentials for %s (%s); local workers can only use local storage", self.aws_conn_id, exc)
            return env
        env["AWS_ACCESS_KEY_ID"] = creds.access_key
        env["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
        if creds.token:
            env["AWS_SESSION_TOKEN"] = creds.token
        return env


class ParameterServerHook(BaseHook):
    """An existing parameter server, from a ``cirrus_parameter_server`` connection:
    host and port, and the run token as the password."""

    conn_name_attr = "ps_conn_id"
    default_conn_name = "cirrus_ps_default"
    conn_type = "cirrus_parameter_server"
    hook_name = "Cirrus parameter server"

    def __init__(self, ps_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ps_conn_id = ps_conn_id

    def get_conn(self) -> tuple[str, str | None]:
        """The server's ``host:port`` (or a sharded group's addresses) and its token.

        A group is given by listing every shard's ``host:port`` in the host field, comma
        separated in the order the group printed them; the port field is then unused.
        """
        conn = self.get_connection(self.ps_conn_id)
        if conn.host and "," in conn.host:
            return conn.host.replace(" ", ""), conn.password or None
        if not conn.host or not conn.port:
            raise ValueError(
                f"connection {self.ps_conn_id!r} must set host and port of the parameter server, or list a "
                "sharded group's host:port addresses, comma-separated, in the host field"
            )
        return f"{conn.host}:{conn.port}", conn.password or None

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: authenticate and ask for the server's status."""
        from ps_service.client import PSClient

        try:
            address, token = self.get_conn()
            with PSClient(address, token=token, timeout=10) as client:
                status = client.status()
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
        return True, f"parameter server at {address}: {len(status.get('tables', {}))} table(s), up {status.get('uptime_s', 0):.0f} s"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login", "extra"],
            "relabeling": {"password": "Token"},
        }
