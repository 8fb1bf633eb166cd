"""The evaluation task: score held-out shards with a saved model, return mergeable metrics."""

from __future__ import annotations

from typing import Any

from cirrus_airflow.metrics import BinaryMetrics
from cirrus_airflow.model_store import load_weights
from cirrus_airflow.models.logistic import predict_margins
from cirrus_airflow.shards import ShardReader
from cirrus_airflow.storage import Storage


def evaluate_task(event: dict, context: Any) -> dict:
    if event.get("model") != "lr":
        raise ValueError(f"unsupported model {event.get('model')!r}; the evaluator scores 'lr'")
    storage = Storage()
    weights = load_weights(storage, event["weights_uri"])
    metrics = BinaryMetrics.empty()
    for uri in event["shards"]:
        with ShardReader(storage, uri) as reader:
            for rows in reader:
                metrics = metrics.merge(BinaryMetrics.of(predict_margins(rows, weights), rows.labels))
    return metrics.to_json()
