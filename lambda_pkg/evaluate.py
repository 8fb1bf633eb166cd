"""The evaluation task: score held-out shards, return mergeable metrics.

At the end of a run it scores every test row with the saved model (``weights_uri``).
While training goes on it scores the first ``max_rows`` test rows (the same ones at
every evaluation, so the points of the curve compare) with the live model, pulling
from the parameter server only the rows their minibatches touch, and reports the
held-out loss to the server for whoever watches the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cirrus_airflow.model_store import load_weights
from cirrus_airflow.models import registry
from cirrus_airflow.shards import RatingRows, ShardReader, SparseRows
from cirrus_airflow.storage import Storage
from ps_service.client import PSClient

EVALUATOR = "evaluator"  # the worker name of its reports


def evaluate_task(event: dict, context: Any) -> dict:
    model = event.get("model")
    registry.check_model(model)
    params = event["model_params"]
    storage = Storage()
    if "weights_uri" in event:
        return _saved_model(model, params, storage, event).to_json()
    return _live_model(model, params, storage, event).to_json()


def _saved_model(model: str, params: dict, storage: Storage, event: dict) -> registry.Metrics:
    table = np.asarray(load_weights(storage, event["weights_uri"]))
    metrics = registry.empty_metrics(model)
    for rows in _rows(storage, event["shards"]):
        metrics = metrics.merge(registry.score(model, params, rows, table))
    return metrics


def _live_model(model: str, params: dict, storage: Storage, event: dict) -> registry.Metrics:
    metrics = registry.empty_metrics(model)
    with PSClient(event["ps"]["address"], token=event["ps"].get("token")) as ps:
        for rows in _rows(storage, event["shards"], max_rows=int(event["max_rows"])):
            batch = registry.minibatch(model, params, rows)
            metrics = metrics.merge(registry.score_batch(batch, ps.pull(event["table"], batch.keys)))
        if metrics.count:
            ps.report(event["table"], "test_loss", registry.held_out_loss(metrics), count=metrics.count,
                      worker=EVALUATOR)
    return metrics


def _rows(storage: Storage, shards: list[str], *, max_rows: int | None = None
          ) -> Iterator[SparseRows | RatingRows]:
    """The shards' rows a row group at a time, the last one cut at ``max_rows``."""
    left = max_rows
    for uri in shards:
        with ShardReader(storage, uri) as reader:
            for rows in reader:
                if left is not None:
                    rows = rows.slice(0, min(len(rows), left))
                    left -= len(rows)
                if len(rows):
                    yield rows
                if left == 0:
                    return
