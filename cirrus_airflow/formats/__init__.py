"""Parsers of raw input formats: text blocks (or Parquet row groups) to rows and rejected rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cirrus_airflow.rejects import RejectedRows


@dataclass
class ParsedBlock:
    """What a parser makes of one block: the valid rows (a format's own row type), the rows
    set aside with their reasons, and how many lines the block held (header, blank and
    comment lines included, so that the next block's line numbers follow on)."""

    rows: Any
    rejected: RejectedRows
    lines: int
    blank: int
