"""The Lambda entry point: ``handler(event, context)`` dispatches on ``event["task"]``.

Events and results are small JSON documents (URIs, ranges, parameters); data goes
through storage. Nothing here imports Airflow: this package is deployed alone.

A task's module is imported when an invocation first asks for it: a training worker's
cold start then skips the input formats and transforms that only preprocessing uses
(some 0.15 s before its first step).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger().setLevel(logging.INFO)

TASKS: dict[str, str] = {
    "preprocess.stats": "lambda_pkg.preprocess:stats_task",
    "preprocess.transform": "lambda_pkg.preprocess:transform_task",
    "preprocess.combine": "lambda_pkg.preprocess:combine_task",
    "preprocess.rejects": "lambda_pkg.preprocess:rejects_task",
    "train.worker": "lambda_pkg.train_worker:worker_task",
    "evaluate": "lambda_pkg.evaluate:evaluate_task",
}


def handler(event: dict, context: Any) -> dict:
    if not isinstance(event, dict) or "task" not in event:
        raise ValueError(f"a cirrus event is a JSON object with a 'task' key, one of {sorted(TASKS)}")
    target = TASKS.get(event["task"])
    if target is None:
        raise ValueError(f"unknown task {event['task']!r}; this bundle handles {sorted(TASKS)}")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(event, context)
