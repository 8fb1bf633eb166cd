"""Rows that could not be used: counted by reason and kept aside, never dropped silently.

Each rejected row is written, with its source file and 1-based line number, to a
JSON-lines file under ``<output>/rejected/`` so that a user can find and fix it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cirrus_airflow.storage import Storage

WRONG_FIELD_COUNT = "wrong_field_count"
BAD_LABEL = "bad_label"
BAD_NUMBER = "bad_number"
MISSING_ID = "missing_id"
INDEX_OUT_OF_RANGE = "index_out_of_range"
DUPLICATE_INDEX = "duplicate_index"


@dataclass
class RejectedRows:
    """Rejected rows of one block: where they are, why, and their text."""

    lines: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def add(self, lines: np.ndarray, reason: str, texts: list[str]) -> None:
        self.lines.extend(int(v) for v in lines)
        self.reasons.extend([reason] * len(lines))
        self.texts.extend(texts)

    def __len__(self) -> int:
        return len(self.lines)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(self.reasons))

    def to_jsonl(self, source: str) -> bytes:
        order = np.argsort(np.asarray(self.lines, dtype=np.int64), kind="stable")
        return "".join(
            json.dumps(
                {"source": source, "line": self.lines[i], "reason": self.reasons[i], "text": self.texts[i]}
            )
            + "\n"
            for i in order
        ).encode("utf-8")


def write_rejects(storage: Storage, uri: str, source: str, rejected: RejectedRows) -> str | None:
    """Write the rejected rows of a block; returns the URI, or None when there were none."""
    if not len(rejected):
        return None
    storage.write_bytes(uri, rejected.to_jsonl(source))
    return uri


def relocate_rejects(storage: Storage, uri: str, target: str, *, line_offset: int) -> str:
    """Copy a file of rejected rows to ``target`` with every line number moved on by
    ``line_offset`` (rows numbered within a split, renumbered within their file)."""
    records = [json.loads(line) for line in storage.read_bytes(uri).splitlines() if line]
    for record in records:
        record["line"] += line_offset
    storage.write_bytes(target, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
    return target
