"""The evaluation task: score held-out shards with a saved model, return mergeable metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from cirrus_airflow.model_store import load_weights
from cirrus_airflow.models import registry
from cirrus_airflow.shards import ShardReader
from cirrus_airflow.storage import Storage


def evaluate_task(event: dict, context: Any) -> dict:
    model = event.get("model")
    registry.check_model(model)
    params = event["model_params"]
    storage = Storage()
    table = load_weights(storage, event["weights_uri"])
    metrics = registry.empty_metrics(model)
    for uri in event["shards"]:
        with ShardReader(storage, uri) as reader:
            for rows in reader:
                metrics = metrics.merge(registry.score(model, params, rows, np.asarray(table)))
    return metrics.to_json()
