"""CirrusSyntheticDataOperator: a deterministic Criteo-shaped data set, for demos and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.hooks import CirrusHook


class CirrusSyntheticDataOperator(BaseOperator):
    """Write a Criteo-format click log whose labels come from a hidden logistic model.

    The file depends only on ``rows`` and ``seed``, so a rerun rewrites it unchanged.

    :param output_uri: the file to write (local path or s3://); templated.
    :param rows: number of rows.
    :param seed: seed of the generator.
    :param dialect: ``tsv`` (no header, like the full Criteo data) or ``csv`` (header).
    """

    template_fields: Sequence[str] = ("output_uri",)

    def __init__(
        self, *, output_uri: str, rows: int = 200_000, seed: int = 0, dialect: str = "tsv",
        aws_conn_id: str | None = "aws_default", **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        if dialect not in ("tsv", "csv"):
            raise ValueError(f"dialect must be 'tsv' or 'csv', got {dialect!r}")
        self.output_uri = output_uri
        self.rows = rows
        self.seed = seed
        self.dialect = dialect
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict:
        storage = CirrusHook(aws_conn_id=self.aws_conn_id).get_storage()
        summary = write_synthetic_criteo(storage, self.output_uri, rows=self.rows, seed=self.seed, dialect=self.dialect)
        self.log.info("wrote %d rows (%d bytes) to %s", summary["rows"], summary["bytes"], self.output_uri)
        return summary
