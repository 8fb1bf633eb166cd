"""Operator extra links: a task's output in the S3 console, a search's live dashboard."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, conf

from cirrus_airflow.dashboard.registry import URL_PREFIX, run_key
from cirrus_airflow.storage import is_s3, parse_s3


class CirrusOutputLink(BaseOperatorLink):
    """Links an s3:// output to its folder in the AWS console (local outputs have no link)."""

    name = "Output in S3"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        uri = getattr(operator, "output_uri", "") or ""
        if not is_s3(uri):
            return ""
        loc = parse_s3(uri)
        prefix = loc.key.rstrip("/") + "/"
        return f"https://s3.console.aws.amazon.com/s3/buckets/{quote(loc.bucket)}?prefix={quote(prefix)}"


class CirrusDashboardLink(BaseOperatorLink):
    """Links a tuning task instance to its search's page on the dashboard (the plugin's app in
    the API server), which exists from the moment the task starts."""

    name = "Tuning dashboard"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        base = conf.get("api", "base_url", fallback="") or ""
        key = run_key(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
        return f"{base.rstrip('/')}{URL_PREFIX}/runs/{key}"
