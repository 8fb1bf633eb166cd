"""The operator extra link to a task's output in the S3 console."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

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
