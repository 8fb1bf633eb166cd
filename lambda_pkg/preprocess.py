"""The preprocessing map tasks: one byte range of one input file per invocation.

``preprocess.stats`` is the first pass (count rows, find bad ones, summarise the
numeric columns of the training rows); ``preprocess.transform`` is the second (turn
rows into sparse features with the merged statistics and write the shards and the
rejected rows). Both parse the same range the same way, so they agree on every row.
A gzip file is one range, the whole file: it is decompressed here and then parsed
exactly like plain text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cirrus_airflow import hashing
from cirrus_airflow.formats import criteo
from cirrus_airflow.formats.text import read_gzip, read_line_range
from cirrus_airflow.numeric import ColumnStats
from cirrus_airflow.rejects import write_rejects
from cirrus_airflow.shards import write_shard
from cirrus_airflow.storage import Storage


def _parse(event: dict, storage: Storage, first_line: int) -> criteo.ParsedBlock:
    if event.get("format") != "criteo":
        raise ValueError(f"unsupported format {event.get('format')!r}; this worker reads 'criteo'")
    src = event["source"]
    data = _read(storage, src)
    dialect = criteo.CriteoDialect.from_json(event["dialect"])
    features = criteo.CriteoFeatures.from_json(event["features"])
    return criteo.parse_block(
        data,
        dialect,
        first_line=first_line,
        skip_header=dialect.header and src["start"] == 0,
        hash_seed=features.hash_seed,
    )


def _read(storage: Storage, src: dict) -> bytes:
    """The text of a split: its lines, or the whole decompressed file for a gzip split."""
    if src.get("compressed", False):
        return read_gzip(storage, src["uri"])
    return read_line_range(storage, src["uri"], src["start"], src["end"], src["size"])


def _test_mask(rows: criteo.CriteoRows, split: dict) -> np.ndarray:
    return hashing.unit_interval(rows.row_hash(), split["seed"]) < split["test_fraction"]


def stats_task(event: dict, context: Any) -> dict:
    storage = Storage()
    block = _parse(event, storage, first_line=1)
    test = _test_mask(block.rows, event["split"])
    features = criteo.CriteoFeatures.from_json(event["features"])
    train_integers = block.rows.integers[~test]
    stats = ColumnStats.of(features.numeric_view(train_integers))
    return {
        "lines": block.lines,
        "blank": block.blank,
        "rows": len(block.rows),
        "train_rows": int((~test).sum()),
        "test_rows": int(test.sum()),
        "train_positives": int(block.rows.labels[~test].sum()),
        "rejected": len(block.rejected),
        "rejected_by_reason": block.rejected.by_reason(),
        "stats": stats.to_json(),
    }


def transform_task(event: dict, context: Any) -> dict:
    storage = Storage()
    block = _parse(event, storage, first_line=event["first_line"])
    outputs = event["outputs"]
    rejected_uri = write_rejects(storage, outputs["rejected"], event["source"]["uri"], block.rejected)
    result: dict[str, Any] = {
        "rows": len(block.rows),
        "rejected": len(block.rejected),
        "rejected_by_reason": block.rejected.by_reason(),
        "rejected_uri": rejected_uri,
        "shards": {},
    }
    if not event.get("write_shards", True):
        return result
    test = _test_mask(block.rows, event["split"])
    sparse = criteo.CriteoFeatures.from_json(event["features"]).transform(block.rows)
    for name, mask in (("train", ~test), ("test", test)):
        if mask.any():
            entry = write_shard(storage, outputs[name], sparse.take(np.flatnonzero(mask)),
                                row_group_rows=event["row_group_rows"])
            result["shards"][name] = {"uri": outputs[name], **entry}
    return result
