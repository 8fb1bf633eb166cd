"""CirrusSyntheticDataOperator: a deterministic data set from a hidden model, for demos and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from cirrus_airflow.datasets import write_synthetic_criteo, write_synthetic_ratings
from cirrus_airflow.hooks import CirrusHook

KINDS = ("criteo", "ratings")


class CirrusSyntheticDataOperator(BaseOperator):
    """Write a Criteo-format click log whose labels come from a hidden logistic model, or
    MovieLens-style ratings from a hidden biased low-rank model.

    The file depends only on its parameters and ``seed``, so a rerun rewrites it unchanged.

    :param output_uri: the file to write (local path or s3://); templated.
    :param kind: ``criteo`` (clicks) or ``ratings`` (``userId,movieId,rating,timestamp``).
    :param rows: number of rows.
    :param seed: seed of the generator.
    :param dialect: clicks as ``tsv`` (no header, like the full Criteo data) or ``csv`` (header).
    :param users: ratings: number of users (ratings per user follow a power law).
    :param items: ratings: number of items.
    """

    template_fields: Sequence[str] = ("output_uri",)

    def __init__(
        self, *, output_uri: str, kind: str = "criteo", rows: int = 200_000, seed: int = 0, dialect: str = "tsv",
        users: int = 2000, items: int = 4000, aws_conn_id: str | None = "aws_default", **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        if dialect not in ("tsv", "csv"):
            raise ValueError(f"dialect must be 'tsv' or 'csv', got {dialect!r}")
        if users < 1 or items < 1:
            raise ValueError(f"users and items must be at least 1, got {users} and {items}")
        self.output_uri = output_uri
        self.kind = kind
        self.rows = rows
        self.seed = seed
        self.dialect = dialect
        self.users = users
        self.items = items
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict:
        storage = CirrusHook(aws_conn_id=self.aws_conn_id).get_storage()
        if self.kind == "ratings":
            summary = write_synthetic_ratings(storage, self.output_uri, users=self.users, items=self.items,
                                              rows=self.rows, seed=self.seed)
        else:
            summary = write_synthetic_criteo(storage, self.output_uri, rows=self.rows, seed=self.seed,
                                             dialect=self.dialect)
        self.log.info("wrote %d rows (%d bytes) to %s", summary["rows"], summary["bytes"], self.output_uri)
        return summary
