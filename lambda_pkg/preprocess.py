"""The preprocessing map tasks.

``preprocess.stats`` (pass 1, one split each): count rows, find bad ones, summarise
the training rows for the transform. ``preprocess.transform`` (pass 2, one split
each): turn rows into the shard schema with the fitted transform, write the rejected
rows, and scatter the rows over the output shards. ``preprocess.combine`` (pass 3,
one shard each): join a shard's pieces, permute and write it as Parquet.

The first two parse the same split the same way, so they agree on every row. A gzip
file is one split, the whole file: it is decompressed here and parsed like plain text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from cirrus_airflow import hashing, shuffle
from cirrus_airflow.formats.blocks import BLOCK_BYTES, line_blocks
from cirrus_airflow.formats.text import split_lines
from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.input_formats import InputFormat, input_format, transform_from_json
from cirrus_airflow.rejects import INDEX_OUT_OF_RANGE, write_rejects
from cirrus_airflow.shards import SparseRows
from cirrus_airflow.storage import Storage, join
from cirrus_airflow.transforms.workspace import Workspace


def _blocks(event: dict, storage: Storage, fmt: InputFormat, first_line: int
            ) -> Iterator[tuple[int, ParsedBlock, bytes, int]]:
    """Each block of the split, parsed: (block number, rows, its text, its first line number).
    Line numbers run on across blocks; only the first block of a file can hold its header."""
    src = event["source"]
    if fmt.row_groups:
        for b, group in enumerate(range(src["start"], src["end"])):
            block = fmt.parse(fmt.read_group(storage, src["uri"], group), first_line=first_line)
            yield b, block, b"", first_line
            first_line += block.lines
        return
    header = src["start"] == 0 and bool(event["dialect"].get("header", False))
    for b, data in enumerate(line_blocks(storage, src, block_bytes=event.get("block_bytes", BLOCK_BYTES))):
        block = fmt.parse(data, event["dialect"], first_line=first_line, skip_header=header and b == 0)
        yield b, block, data, first_line
        first_line += block.lines


def _test_mask(rows: Any, event: dict) -> np.ndarray:
    """Held-out rows: all of a test input, none of a train input, else a seeded hash of the row."""
    role = event["role"]
    if role != "split":
        return np.full(len(rows), role == "test")
    split = event["split"]
    return hashing.unit_interval(rows.row_hash(), split["seed"]) < split["test_fraction"]


def stats_task(event: dict, context: Any) -> dict:
    fmt = input_format(event.get("format"), event.get("format_options"))
    storage = Storage()
    transform = transform_from_json(event["transform"])
    workspace = Workspace(storage, event["output"])
    result = _Tally()
    summaries = []
    for b, block, _, _ in _blocks(event, storage, fmt, first_line=1):
        test = _test_mask(block.rows, event)
        result.add(block, block.rows, test)
        summaries.append(transform.summarize(block.rows, ~test, workspace, f"{event['index']:05d}-{b:04d}"))
    return {**result.to_json(), "summaries": summaries}


def transform_task(event: dict, context: Any) -> dict:
    fmt = input_format(event.get("format"), event.get("format_options"))
    storage = Storage()
    workspace = Workspace(storage, event["output"])
    transform = transform_from_json(event["transform"]).load(workspace)
    result = _Tally()
    pieces: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    rejected_files = []
    for b, block, data, first_line in _blocks(event, storage, fmt, first_line=event["first_line"]):
        rows = _drop_out_of_range(transform, block, data, first_line)
        key = f"{event['index']:05d}-{b:04d}"
        uri = write_rejects(storage, join(event["rejected_prefix"], f"split-{key}.jsonl"), event["source"]["uri"],
                            block.rejected)
        if uri:
            rejected_files.append(uri)
        test = _test_mask(rows, event)
        result.add(block, rows, test)
        if event["write"]:
            table = transform.apply(rows)
            if isinstance(table, SparseRows):
                result.train_positives += int(table.labels[~test].sum())
            _scatter(storage, event, table, rows.row_hash(), test, key, pieces)
    return {**result.to_json(), "rejected_files": rejected_files, "pieces": pieces}


class _Tally:
    """A split's counts, summed over its blocks."""

    def __init__(self) -> None:
        self.lines = self.blank = self.rows = self.train_rows = self.test_rows = self.train_positives = 0
        self.reasons: Counter[str] = Counter()

    def add(self, block: ParsedBlock, rows: Any, test: np.ndarray) -> None:
        self.lines += block.lines
        self.blank += block.blank
        self.rows += len(rows)
        self.test_rows += int(test.sum())
        self.train_rows += len(rows) - int(test.sum())
        self.reasons.update(block.rejected.by_reason())

    def to_json(self) -> dict:
        return {"lines": self.lines, "blank": self.blank, "rows": self.rows, "train_rows": self.train_rows,
                "test_rows": self.test_rows, "train_positives": self.train_positives,
                "rejected": sum(self.reasons.values()), "rejected_by_reason": dict(self.reasons)}


def _drop_out_of_range(transform: Any, block: ParsedBlock, data: bytes, first_line: int) -> Any:
    """The rows the fitted transform can take; the others join the block's rejected rows."""
    rows = block.rows
    if not hasattr(transform, "out_of_range"):
        return rows
    outside = transform.out_of_range(rows)
    if not outside.any():
        return rows
    lines = split_lines(data)
    which = np.flatnonzero(outside)
    texts = [lines.text(int(n) - first_line) for n in rows.lines[which]]
    block.rejected.add(rows.lines[which], INDEX_OUT_OF_RANGE, texts)
    return rows.take(np.flatnonzero(~outside))


def _scatter(storage: Storage, event: dict, table: Any, row_hash: np.ndarray, test: np.ndarray, key: str,
             pieces: dict[str, dict[str, list[str]]]) -> None:
    plan = event["shuffle"]
    for part, mask in (("train", ~test), ("test", test)):
        if plan[f"{part}_shards"] and mask.any():
            written = shuffle.scatter(storage, table, row_hash, np.flatnonzero(mask), shards=plan[f"{part}_shards"],
                                      seed=plan["seed"], output=event["output"], part=part, key=key)
            for shard, uri in written.items():
                pieces[part].setdefault(shard, []).append(uri)


def combine_task(event: dict, context: Any) -> dict:
    storage = Storage()
    return shuffle.combine(storage, event["pieces"], event["uri"], row_group_rows=event["row_group_rows"],
                           seed=event["seed"])
