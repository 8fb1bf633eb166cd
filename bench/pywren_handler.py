"""The Lambda function of the PyWren-style baseline in ``bench.train``: one stateless
gradient step of one worker, ``FunctionConfig(handler="bench.pywren_handler.handler")``.

As in PyWren, an invocation keeps nothing from the last one: it reads the whole current
model and the row group that holds its minibatch from storage, computes the
logistic-regression gradient of that minibatch and writes it back to storage, and
returns only small JSON (its row count and where its time went). The driver picks the
minibatch (``unit`` and ``rows``), so the event says everything the step needs:

    {"model": URI of the weights (np.save bytes, float32, bias last),
     "unit": [shard URI, row group], "rows": [first, stop) within the row group,
     "bias_key": the bias's index (the feature dimension),
     "gradient": URI to write the gradient to (int64 keys then float32 values, raw)}

Not part of the deployed bundle (``lambda_pkg``): the benchmark's local runtime loads it
from this source tree. Its storage client is made once per sandbox and kept, as a warm
Lambda keeps its globals: making a boto3 client at every step would charge the baseline
for something a careful implementation avoids.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from cirrus_airflow.models.logistic import Minibatch
from cirrus_airflow.shards import ShardReader
from cirrus_airflow.storage import Storage

_storage: Storage | None = None


def handler(event: dict, context: Any) -> dict:
    global _storage
    storage = _storage = _storage or Storage()
    started = time.perf_counter()
    weights = np.load(io.BytesIO(storage.read_bytes(event["model"])), allow_pickle=False)
    model_read = time.perf_counter()
    uri, group = event["unit"]
    first, stop = (int(r) for r in event["rows"])
    with ShardReader(storage, uri) as reader:
        rows = reader.row_group(int(group)).slice(first, stop)
    data_read = time.perf_counter()
    batch = Minibatch.of(rows, int(event["bias_key"]))
    grad, loss_sum = batch.gradient(weights[batch.keys])
    computed = time.perf_counter()
    storage.write_bytes(event["gradient"], batch.keys.astype("<i8").tobytes() + grad.astype("<f4").tobytes())
    written = time.perf_counter()
    return {
        "examples": len(batch),
        "loss_sum": loss_sum,
        "model_ms": 1e3 * (model_read - started),
        "data_ms": 1e3 * (data_read - model_read),
        "compute_ms": 1e3 * (computed - data_read),
        "write_ms": 1e3 * (written - computed),
    }
