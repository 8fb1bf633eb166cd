"""Where a preprocessing run keeps files that are neither shards nor the manifest.

``<output>/_work/`` holds what passes between the stages of one run (per-split
statistics too large for a Lambda result, shuffle pieces); it is removed when the run
finishes. ``<output>/transform/`` holds the fitted transform's large parts (id
mappings, the frequent-bucket mask); the manifest names them by relative path.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirrus_airflow.storage import Storage, join

WORK = "_work"
TRANSFORM = "transform"


@dataclass(frozen=True)
class Workspace:
    storage: Storage
    output: str

    def side_uri(self, key: str, name: str) -> str:
        """A first-pass file of one block (``key`` names its split and block)."""
        return join(self.output, WORK, "stats", f"split-{key}-{name}")

    def artifact_uri(self, relative: str) -> str:
        return join(self.output, relative)

    def write_array(self, uri: str, array: np.ndarray) -> str:
        sink = io.BytesIO()
        np.save(sink, array, allow_pickle=False)
        self.storage.write_bytes(uri, sink.getvalue())
        return uri

    def read_array(self, uri: str) -> np.ndarray:
        return np.load(io.BytesIO(self.storage.read_bytes(uri)), allow_pickle=False)

    def write_table(self, uri: str, table: pa.Table) -> str:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.storage.write_bytes(uri, sink.getvalue())
        return uri

    def read_table(self, uri: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.storage.read_bytes(uri)))
