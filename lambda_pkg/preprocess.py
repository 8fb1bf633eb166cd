"""The preprocessing map tasks.

``preprocess.stats`` (pass 1, one split each): count rows, find bad ones, summarise
the training rows for the transform. ``preprocess.transform`` (pass 2, one split
each): turn rows into the shard schema with the fitted transform, write the rejected
rows, and scatter the rows into shuffle pieces. ``preprocess.combine`` (pass 3, one
shard each): gather a shard from the pieces, permute and write it as Parquet.

A transform whose fitted part can wait for the shuffle (tabular data: scaling and
rare buckets) skips pass 2: pass 1 scatters its features and writes the rejected
rows, ``preprocess.rejects`` renumbers those from their file's first line, and pass 3
finishes the rows. The passes parse a split the same way, so they agree on every
row. A gzip file is one split, the whole file: it is decompressed here and parsed
like plain text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from cirrus_airflow import hashing, shuffle
from cirrus_airflow.formats.blocks import BLOCK_BYTES, line_blocks
from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.input_formats import InputFormat, input_format, transform_from_json
from cirrus_airflow.rejects import relocate_rejects, write_rejects
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
    """Pass 1. For a transform that finishes after the shuffle (``event["shuffle_seed"]`` is
    set), also its features scattered and the rejected rows written: those are numbered
    from the split's first line, as its place in the file is not known yet."""
    fmt = input_format(event.get("format"), event.get("format_options"))
    storage = Storage()
    transform = transform_from_json(event["transform"])
    workspace = Workspace(storage, event["output"])
    scatters = "shuffle_seed" in event
    result = _Tally()
    summaries = []
    for b, block, _, _ in _blocks(event, storage, fmt, first_line=1):
        key = f"{event['index']:05d}-{b:04d}"
        test = _test_mask(block.rows, event)
        result.add(block, block.rows, test)
        summaries.append(transform.summarize(block.rows, ~test, workspace, key))
        if scatters:
            result.write_rejects(storage, event, block, key)
            features = transform.features(block.rows)
            result.train_positives += int(features.labels[~test].sum())
            result.scatter(storage, event, features, block.rows.row_hash(), test, key)
    return {**result.to_json(), "summaries": summaries}


def transform_task(event: dict, context: Any) -> dict:
    """Pass 2 (for transforms whose fit decides which rows are kept, or what their ids become)."""
    fmt = input_format(event.get("format"), event.get("format_options"))
    storage = Storage()
    workspace = Workspace(storage, event["output"])
    transform = transform_from_json(event["transform"]).load(workspace)
    result = _Tally()
    for b, block, data, first_line in _blocks(event, storage, fmt, first_line=event["first_line"]):
        rows = transform.usable(block, data, first_line)
        key = f"{event['index']:05d}-{b:04d}"
        result.write_rejects(storage, event, block, key)
        test = _test_mask(rows, event)
        result.add(block, rows, test)
        if event["write"]:
            table = transform.apply(rows)
            if isinstance(table, SparseRows):
                result.train_positives += int(table.labels[~test].sum())
            result.scatter(storage, event, table, rows.row_hash(), test, key)
    return result.to_json()


def rejects_task(event: dict, context: Any) -> dict:
    """Renumber a split's rejected rows from its file's first line, into their final place."""
    storage = Storage()
    placed = [relocate_rejects(storage, uri, join(event["rejected_prefix"], uri.rsplit("/", 1)[-1]),
                               line_offset=event["line_offset"]) for uri in event["rejected_files"]]
    return {"rejected_files": placed}


class _Tally:
    """A split's counts, summed over its blocks."""

    def __init__(self) -> None:
        self.lines = self.blank = self.rows = self.train_rows = self.test_rows = self.train_positives = 0
        self.reasons: Counter[str] = Counter()
        self.rejected_files: list[str] = []
        self.pieces: dict[str, list[str]] = {"train": [], "test": []}

    def add(self, block: ParsedBlock, rows: Any, test: np.ndarray) -> None:
        self.lines += block.lines
        self.blank += block.blank
        self.rows += len(rows)
        self.test_rows += int(test.sum())
        self.train_rows += len(rows) - int(test.sum())
        self.reasons.update(block.rejected.by_reason())

    def write_rejects(self, storage: Storage, event: dict, block: ParsedBlock, key: str) -> None:
        uri = write_rejects(storage, join(event["rejected_prefix"], f"split-{key}.jsonl"), event["source"]["uri"],
                            block.rejected)
        if uri:
            self.rejected_files.append(uri)

    def scatter(self, storage: Storage, event: dict, rows: Any, row_hash: np.ndarray, test: np.ndarray,
                key: str) -> None:
        """The block's rows as one shuffle piece per part."""
        for part, mask in (("train", ~test), ("test", test)):
            uri = shuffle.piece_uri(event["output"], part, key)
            if shuffle.scatter(storage, rows, row_hash, np.flatnonzero(mask), seed=event["shuffle_seed"], uri=uri):
                self.pieces[part].append(uri)

    def to_json(self) -> dict:
        return {"lines": self.lines, "blank": self.blank, "rows": self.rows, "train_rows": self.train_rows,
                "test_rows": self.test_rows, "train_positives": self.train_positives,
                "rejected": sum(self.reasons.values()), "rejected_by_reason": dict(self.reasons),
                "rejected_files": self.rejected_files, "pieces": self.pieces}


def combine_task(event: dict, context: Any) -> dict:
    """Pass 3: one shard from the pieces, finished by the fitted transform if pass 1 scattered features."""
    storage = Storage()
    finish = None
    if "transform" in event:
        finish = transform_from_json(event["transform"]).load(Workspace(storage, event["output"])).finish
    return shuffle.combine(storage, event["pieces"], event["uri"], shard=event["shard"], shards=event["shards"],
                           row_group_rows=event["row_group_rows"], seed=event["seed"], finish=finish)
