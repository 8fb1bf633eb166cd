"""The Lambda entry point: ``handler(event, context)`` dispatches on ``event["task"]``.

Events and results are small JSON documents (URIs, ranges, parameters); data goes
through storage. Nothing here imports Airflow: this package is deployed alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lambda_pkg import evaluate, preprocess, train_worker

logging.getLogger().setLevel(logging.INFO)

TASKS: dict[str, Callable[[dict, Any], dict]] = {
    "preprocess.stats": preprocess.stats_task,
    "preprocess.transform": preprocess.transform_task,
    "preprocess.combine": preprocess.combine_task,
    "preprocess.rejects": preprocess.rejects_task,
    "train.worker": train_worker.worker_task,
    "evaluate": evaluate.evaluate_task,
}


def handler(event: dict, context: Any) -> dict:
    if not isinstance(event, dict) or "task" not in event:
        raise ValueError(f"a cirrus event is a JSON object with a 'task' key, one of {sorted(TASKS)}")
    task = TASKS.get(event["task"])
    if task is None:
        raise ValueError(f"unknown task {event['task']!r}; this bundle handles {sorted(TASKS)}")
    return task(event, context)
